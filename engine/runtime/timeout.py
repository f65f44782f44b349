"""A wall-clock limit on ONNX Runtime runs: one watchdog thread sets ``RunOptions.terminate`` on
the runs past their deadline, so a runaway graph (a Loop with a computed trip count) stops.

>>> import onnxruntime
>>> options = onnxruntime.RunOptions()
>>> ticket = watch(options, 0.01); time.sleep(0.1); release(ticket)
>>> options.terminate
True
"""
import itertools
import threading
import time

_runs = {}  # ticket → (deadline, RunOptions)
_tickets = itertools.count()
_wake = threading.Condition()
_state = {"thread": None, "until": None}  # the watchdog and the time it sleeps until


def watch(options, seconds):
    """Set ``options.terminate`` ``seconds`` from now unless :func:`release` comes first; returns
    the ticket to release (cost: a lock and a dictionary entry; the watchdog wakes only at the
    earliest deadline).

    >>> import onnxruntime
    >>> release(watch(onnxruntime.RunOptions(), 600))
    """
    due = time.monotonic() + seconds
    with _wake:
        ticket = next(_tickets)
        _runs[ticket] = (due, options)
        thread = _state["thread"]
        if thread is None or not thread.is_alive():
            _state["thread"] = threading.Thread(target=_watch, name="onnxlens-timeout", daemon=True)
            _state["until"] = due
            _state["thread"].start()
        elif _state["until"] is None or due < _state["until"]:
            _state["until"] = due
            _wake.notify()
    return ticket


def release(ticket):
    """Stop watching the run of ``ticket`` (it ended)."""
    with _wake:
        _runs.pop(ticket, None)


def _watch():
    with _wake:
        while True:
            now = time.monotonic()
            for ticket, (due, options) in list(_runs.items()):
                if due <= now:
                    options.terminate = True
                    del _runs[ticket]
            _state["until"] = min((due for due, _ in _runs.values()), default=None)
            _wake.wait(None if _state["until"] is None else _state["until"] - now)
