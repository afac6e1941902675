import io

from miracle import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_plain_line_every_tenth():
    log = io.StringIO()
    bar = progress.bar(total=200, desc="training", stream=log)
    for _ in range(200):
        bar.set_postfix(loss="0.123", refresh=False)  # as training calls it, tqdm's keyword included
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 100 // progress.LINE_EVERY_PERCENT
    assert lines[0].startswith("training: 10% (20/200 steps, loss 0.123, ")
    assert lines[-1].startswith("training: 100% (200/200 steps")
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue() and "refresh" not in log.getvalue()


def test_a_resumed_bar_counts_from_where_it_was():
    log = io.StringIO()
    bar = progress.bar(total=100, initial=55, desc="coding", unit="block", stream=log)
    bar.update(5)
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[0]]
    assert log.getvalue().startswith("coding: 60% (60/100 blocks, ")


def test_transient_and_disabled_bars_write_nothing_to_a_log():
    log = io.StringIO()
    for bar in (progress.bar(total=10, transient=True, stream=log), progress.bar(total=10, enabled=False, stream=log)):
        bar.update(10)
        bar.close()
    assert log.getvalue() == ""


def test_a_terminal_gets_a_live_bar():
    terminal = Terminal()
    bar = progress.bar(total=10, desc="training", stream=terminal)
    bar.update(10)
    bar.close()
    assert "\r" in terminal.getvalue() and "10/10" in terminal.getvalue()
