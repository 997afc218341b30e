import subprocess
import sys


def test_reading_and_rendering_never_load_torch(tmp_path, write_results):
    path = write_results(tmp_path / "r.h5")
    code = (
        "import sys; from analysis import load; import reports\n"
        f"res = load({str(path)!r}); reports.render_html(res, {str(tmp_path / 'r.html')!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "r.html").stat().st_size > 1000
