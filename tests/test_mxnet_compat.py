"""MXNet 1.9.1 on today's numpy: the one name it needs is given back on numpy 1.24-1.26, and on
numpy 2 d2lres refuses with the set that works."""
import numpy
import pytest

from d2lres.host import backends, mxnet_compat


def test_numpy_2_is_refused_naming_the_set_that_works(monkeypatch):
    monkeypatch.setattr(numpy, "__version__", "2.1.0")
    with pytest.raises(backends.BackendUnavailable, match="constraints/all.txt"):
        mxnet_compat.prepare_numpy()


@pytest.mark.skipif("mxnet" not in backends.available(), reason="MXNet is not in this set")
def test_boolean_masks_work_at_run_time():
    backends.load("mxnet")
    from mxnet import np as mnp
    assert numpy.bool is bool
    x = mnp.array([1.0, -2.0, 3.0])
    assert x[x > 0].asnumpy().tolist() == [1.0, 3.0]
    assert x[mnp.array([True, False, True], dtype=bool)].asnumpy().tolist() == [1.0, 3.0]
