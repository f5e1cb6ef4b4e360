"""Fake cupy.cuda: devices, streams as worker threads, events (see the package docstring)."""
import queue
import threading

_current_device = [0]
_streams = {}


class runtime:
    @staticmethod
    def getDeviceCount():
        return 2

    @staticmethod
    def getDevice():
        return _current_device[0]


class Device:
    def __init__(self, i=None):
        self.id = _current_device[0] if i is None else int(i)

    def use(self):
        _current_device[0] = self.id

    def __enter__(self):
        self._prev = _current_device[0]
        _current_device[0] = self.id
        return self

    def __exit__(self, *exc):
        _current_device[0] = self._prev


class Stream:
    """A stream: a thread running queued closures in order (the null stream runs them at once)."""
    _current = None

    def __init__(self, non_blocking=False, null=False):
        self.null = null
        self.ptr = 0 if null else id(self)
        self.dead = False
        if not null:
            self.q = queue.Queue()
            threading.Thread(target=self._run, daemon=True).start()
            _streams[self.ptr] = self

    def _run(self):
        while True:
            fn = self.q.get()
            try:
                fn()
            except Exception as e:   # like a hung kernel: nothing after it ever runs
                self.dead = True
                print(f"[fake stream] work failed: {e!r}; the stream hangs from now on", flush=True)
                return

    def launch(self, fn):
        if self.null:
            fn()
        else:
            self.q.put(fn)

    def wait_event(self, event):
        if not self.null:
            self.q.put(lambda: event._flag.wait())

    def synchronize(self):
        if not self.null:
            e = Event()
            e.record(self)
            e._flag.wait()

    def __enter__(self):
        self._prev, Stream._current = Stream._current, self
        return self

    def __exit__(self, *exc):
        Stream._current = self._prev


_null = Stream(null=True)


def get_current_stream():
    return Stream._current or _null


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self._flag = threading.Event()

    def record(self, stream=None):
        stream = stream or get_current_stream()
        if stream.null:
            self._flag.set()
        else:
            stream.q.put(self._flag.set)

    @property
    def done(self):
        return self._flag.is_set()

    def synchronize(self):
        self._flag.wait()


from . import nccl  # noqa: E402,F401
