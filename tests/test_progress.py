"""Progress: a bar on a terminal, at most ~11 plain lines in a log, nothing when disabled."""
import io

from prunekit.progress import LogProgress, progress_bar


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_plain_lines_not_carriage_returns():
    log = io.StringIO()
    bar = progress_bar(300, True, "recovery", stream=log)
    assert isinstance(bar, LogProgress)
    for i in range(300):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 10 <= len(lines) <= 11
    assert lines[0].startswith("recovery: 30/300 (10%)") and lines[-1].startswith("recovery: 300/300 (100%)")
    assert "loss=0.003" in lines[-1]


def test_close_prints_the_final_count_once():
    log = io.StringIO()
    bar = progress_bar(7, True, "blocks", stream=log)
    for _ in range(5):
        bar.update(1)
    bar.close()
    bar.close()
    assert log.getvalue().splitlines()[-1].startswith("blocks: 5/7")
    assert sum("5/7" in line for line in log.getvalue().splitlines()) == 1


def test_a_terminal_gets_a_tqdm_bar_and_disabled_gets_none():
    tty = _Tty()
    bar = progress_bar(3, True, "x", stream=tty)
    assert type(bar).__name__ == "tqdm" or "tqdm" in type(bar).__module__
    bar.close()
    assert progress_bar(3, False, "x") is None
