"""PyCudaDevice's context rules, checked without a GPU against a stand-in for pycuda.driver."""

import sys
import threading
import types

import numpy as np
import pytest

from dlc.runtime import cuda as rt


class FakeDriver(types.ModuleType):
    """Records what the device asks of the driver: contexts retained, pushed and popped, launches synchronized."""

    class Error(Exception):
        pass

    def __init__(self):
        super().__init__("pycuda.driver")
        self.log, self.stack = [], threading.local()
        driver = self

        class Context:
            def push(self):
                driver.log.append(("push", threading.get_ident()))
                driver._stack().append(self)

            @staticmethod
            def pop():
                driver.log.append(("pop", threading.get_ident()))
                driver._stack().pop()

            @staticmethod
            def get_device():
                return Device(0)

            @staticmethod
            def synchronize():
                driver.log.append(("sync", threading.get_ident()))
                if driver.fail_sync:
                    raise FakeDriver.Error("an illegal memory access was encountered")

        class Device:
            def __init__(self, index):
                self.index = index

            @staticmethod
            def count():
                return 1

            def retain_primary_context(self):
                driver.log.append(("retain", self.index))
                return Context()

            def get_attribute(self, attr):
                return 132

            def compute_capability(self):
                return (9, 0)

        self.Context, self.Device, self.fail_sync = Context, Device, False
        self.device_attribute = types.SimpleNamespace(MULTIPROCESSOR_COUNT="sm_count")

    def _stack(self):
        if not hasattr(self.stack, "s"):
            self.stack.s = []
        return self.stack.s

    def init(self):
        pass

    def mem_alloc(self, nbytes):
        assert self._stack(), "an allocation outside the context"
        return np.zeros(nbytes, np.uint8)


@pytest.fixture
def driver(monkeypatch):
    fake = FakeDriver()
    monkeypatch.setitem(sys.modules, "pycuda", types.ModuleType("pycuda"))
    monkeypatch.setitem(sys.modules, "pycuda.driver", fake)
    monkeypatch.setattr(rt.PyCudaDevice, "_context", None)
    return fake


def test_primary_context_is_retained_once_and_pushed_around_each_call(driver):
    a, b = rt.PyCudaDevice(), rt.PyCudaDevice()
    assert [e for e in driver.log if e[0] == "retain"] == [("retain", 0)]
    assert a.max_blocks == 132 * 8 and a.arch == "sm_90"
    driver.log.clear()
    with a.active():
        b.alloc(16)                      # nested: the context is pushed once
        a.alloc(16)
    assert [e[0] for e in driver.log] == ["push", "pop"]
    assert driver._stack() == []         # the caller's context stack is as it was


def test_calls_from_another_thread_push_the_context_there(driver):
    dev = rt.PyCudaDevice()
    driver.log.clear()
    t = threading.Thread(target=dev.alloc, args=(8,))
    t.start()
    t.join()
    assert [e[0] for e in driver.log] == ["push", "pop"] and driver.log[0][1] == t.ident


def test_sync_after_launch_names_the_failing_kernel(driver, monkeypatch):
    monkeypatch.setenv("DLC_CUDA_SYNC", "1")
    dev = rt.PyCudaDevice()
    launch = dev._launcher("k7_s", types.SimpleNamespace(prepared_call=lambda grid, block, *args: None), None)
    launch((1, 1, 1), (32, 1, 1), [])
    assert ("sync", threading.get_ident()) in driver.log
    driver.fail_sync = True
    with pytest.raises(rt.CudaLaunchError, match="kernel k7_s .*illegal memory access"):
        launch((1, 1, 1), (32, 1, 1), [])
    assert driver._stack() == []
