"""The upload-cost benchmark runs in its quick mode (files of a few hundred KB): every hostile upload
gets its 422, the legitimate ones decode, and each row has its measurements."""

from benchmarks.upload_cost import COLUMNS, UPLOADS, rows

LEGITIMATE = {"jpeg-at-100-scans", "largest-png-2048", "largest-jpeg-2048-cmyk"}


def test_the_quick_run_refuses_every_hostile_upload_and_decodes_the_legitimate_ones():
    table = rows(quick=True, timeout_s=60)
    assert [row["upload"] for row in table] == [upload.name for upload in UPLOADS]
    for row in table:
        assert list(row) == list(COLUMNS) and row["seconds"] < 5, row
        assert row["worst_loop_lag_ms"] >= 0 and row["peak_mb_added"] >= 0, row
        expected = "decoded" if row["upload"] in LEGITIMATE else "422"
        assert row["outcome"].startswith(expected), row
