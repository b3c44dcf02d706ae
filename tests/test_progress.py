import io

from defectkit.progress import track


def test_plain_lines_when_not_a_tty(monkeypatch):
    monkeypatch.setenv("DEFECTKIT_PROGRESS", "1")
    buf = io.StringIO()
    items = list(track(range(5), desc="test", unit="img", every_s=0.0, stream=buf))
    assert items == [0, 1, 2, 3, 4]
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("test: 1/5 img (20%)") and "ETA" in lines[0]
    assert lines[-1].startswith("test: 5/5 img (100%)") and lines[-1].endswith("done")


def test_off_by_environment(monkeypatch):
    monkeypatch.setenv("DEFECTKIT_PROGRESS", "0")
    buf = io.StringIO()
    assert list(track(iter([1, 2]), desc="x", every_s=0.0, stream=buf)) == [1, 2]
    assert buf.getvalue() == ""
