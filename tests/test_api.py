"""One API: every backend package exports exactly ``d2lres.core.api.NAMES`` with the contract's
signatures (parameter names, kinds, defaults) and the ``Trainer`` methods; the table of names x
backends is printed (``pytest -s``)."""
import inspect

import pytest

from d2lres.core import api
from d2lres.host import backends

pytestmark = pytest.mark.framework

AVAILABLE = backends.available()


def test_every_backend_of_the_set_is_here():
    """The default set (numpy 1.26) has all four backends; the current set (numpy 2) all but MXNet.
    A backend missing from its set would otherwise only shrink the parametrized tests."""
    import numpy
    numpy2 = int(numpy.__version__.split(".")[0]) >= 2
    expected = [b for b in backends.BACKENDS if not (b == "mxnet" and numpy2)]
    assert AVAILABLE == expected


@pytest.mark.parametrize("backend", AVAILABLE)
def test_exports_exactly_the_contracts_names(backend):
    mod = backends.load(backend)
    assert list(mod.__all__) == api.NAMES
    missing = [n for n in api.NAMES if not hasattr(mod, n)]
    assert not missing, f"{backend} lacks {missing}"


@pytest.mark.parametrize("name", api.NAMES)
def test_signature_matches_the_contract_in_every_backend(name):
    want = api.signature(api.contract(name))
    got = {b: api.signature(getattr(backends.load(b), name)) for b in AVAILABLE}
    wrong = {b: sig for b, sig in got.items() if sig != want}
    assert not wrong, f"{name}: contract {want}; differs in {wrong}"


@pytest.mark.parametrize("backend", AVAILABLE)
def test_the_block_family_are_siblings_on_the_backends_block(backend):
    """Bottleneck, PreActResidual and PreActBottleneck are each a ``Block`` of the backend, named
    and documented as their own classes, and none is a subclass of another (PreActResidual was a
    Bottleneck before: an isinstance check could not tell a basic block from a bottleneck)."""
    mod = backends.load(backend)
    family = [getattr(mod, name) for name, *_ in api.BLOCK_FAMILY]
    for cls, (name, kind, version, _) in zip(family, api.BLOCK_FAMILY):
        assert issubclass(cls, mod.Block) and (cls.__name__, cls.kind, cls.version) == (name, kind, version)
        assert cls.__module__ == mod.Block.__module__ and cls.__doc__
        assert not any(issubclass(cls, other) for other in family if other is not cls)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_trainer_has_the_contracts_methods(backend):
    cls = backends.load(backend).Trainer
    have = {n for n, v in inspect.getmembers(cls, callable) if not n.startswith("_")}
    assert api.methods(api.Trainer) <= have
    for method in api.methods(api.Trainer):
        assert api.signature(getattr(cls, method))[1:] == api.signature(getattr(api.Trainer, method))[1:], method


@pytest.mark.parametrize("name", api.PARALLEL_NAMES)
def test_data_parallel_names_match_the_contract_in_every_backend(name):
    import importlib

    from d2lres import parallel
    want = api.signature(api.contract(name))
    got = {b: api.signature(getattr(importlib.import_module(f"d2lres.{b}.parallel"), name)) for b in AVAILABLE}
    wrong = {b: sig for b, sig in got.items() if sig != want}
    assert not wrong, f"{name}: contract {want}; differs in {wrong}"
    assert ("sync_bn", "KEYWORD_ONLY", parallel.SYNC_BN_DEFAULT) in want


def test_the_contract_covers_every_backend_and_prints_the_table(capsys):
    assert len(AVAILABLE) >= 2, f"the API check needs at least two backends, found {AVAILABLE}"
    rows = [f"{'name':<28}" + "".join(f"{b:>8}" for b in AVAILABLE)]
    for name in api.NAMES:
        want = api.signature(api.contract(name))
        marks = ["same" if api.signature(getattr(backends.load(b), name)) == want else "DIFF" for b in AVAILABLE]
        rows.append(f"{name:<28}" + "".join(f"{m:>8}" for m in marks))
    with capsys.disabled():
        print("\n" + "\n".join(rows))
    assert "DIFF" not in "\n".join(rows)


def test_unknown_contract_name_is_refused():
    with pytest.raises(KeyError, match="not part of the d2lres API"):
        api.contract("resnet_block_spec")
