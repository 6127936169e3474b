"""Every host x every method: the properties each reduction must keep, on tiny random models.

The hosts are the rows of :data:`hosts_matrix.HOSTS`; the methods are :data:`mmtt.modules.METHODS`.
For each pair: a no-op reduction is the host bit for bit, tokens really are fewer after a
reduction, a forward writes nothing on any module, two threads share one model, checkpointed
gradients are the plain ones, a pickled copy gives the same outputs, the reduction comes off
exactly, and a reducing forward makes no host-device synchronising call the host itself does not
make. Bad settings raise one-line ValueErrors naming their key. A method a host refuses by design
is checked for that refusal only.
"""
import collections
import copy
import pickle
import re

import pytest
import torch
from hosts_matrix import HOSTS, Host, default_spec, equal, run, tokens_entering
from test_token_state import run_alone, run_concurrently
from torch import nn
from torch.overrides import TorchFunctionMode

from mmtt.modules import METHODS

# (host, method) -> why the pair fails, for the properties that run a reducing forward (strict
# xfails: a fix shows as a failure until its entry goes). None: every host runs every method it
# accepts.
KNOWN = {}


def cells(reducing=lambda host: True):
    """pytest params for every host x method; refused pairs are skipped (see
    :func:`test_a_refused_method_is_named`), known failures of a reducing forward are strict xfails
    on the hosts where the test runs one (``reducing(host)``)."""
    params = []
    for host in HOSTS:
        for method in METHODS:
            marks = []
            if method in host.refused:
                marks.append(pytest.mark.skip(reason=f'{host.name} refuses method={method!r} by '
                                                     'design (test_a_refused_method_is_named)'))
            elif reducing(host) and (host.name, method) in KNOWN:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[host.name, method]))
            params.append(pytest.param(host, method, marks=marks, id=f'{host.name}-{method}'))
    return params


def reduced(host: Host, method: str, checkpoint: bool = False) -> nn.Module:
    return host.build(default_spec(host, method), checkpoint)


# ---- 1. a no-op reduction is the host ----

@pytest.mark.parametrize('host,method', cells(reducing=lambda host: False))
def test_a_no_op_reduction_gives_the_hosts_output_exactly(host, method):
    x = host.image(2, 0)
    expected = run(host, host.plain(), x)
    model = host.build(default_spec(host, method, **host.keep_one), False)
    assert equal(run(host, model, x), expected)
    assert list(model.state_dict()) == list(host.plain().state_dict())


# ---- 2. a reduction happens ----

@pytest.mark.parametrize('host,method', cells())
def test_fewer_tokens_enter_a_block_after_the_reduction(host, method):
    x = host.image(2, 0)
    full = tokens_entering(host, host.plain(), x)
    model = reduced(host, method)
    assert tokens_entering(host, model, x) < full
    assert all(torch.isfinite(o).all() for o in run(host, model, x))


# ---- 3. a forward writes nothing on a module ----

def snapshot(model: nn.Module) -> dict:
    """Every module's attributes (name -> object id, and the entries of its parameter, buffer,
    module and hook dicts), and each tensor's in-place version counter."""
    state = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for key, value in vars(module).items():
            state[name, key] = id(value)
            if isinstance(value, dict):
                for k, v in value.items():
                    state[name, key, k] = id(v)
                    if isinstance(v, torch.Tensor):
                        state[name, key, k, 'version'] = v._version
    return state


def changes(before: dict, after: dict) -> list:
    return sorted(str(k) for k in before.keys() | after.keys() if before.get(k) != after.get(k))


@pytest.mark.parametrize('host,method', cells())
def test_a_forward_writes_nothing_on_any_module(host, method):
    model = reduced(host, method)
    x = host.image(2, 0)
    before = snapshot(model)
    run(host, model, x)
    assert changes(before, snapshot(model)) == []


# ---- 4. threads ----

@pytest.mark.parametrize('host,method', cells())
def test_two_threads_give_the_sequential_results(host, method):
    model = reduced(host, method)
    inputs = [host.image(1, 1), host.image(3, 2)]   # another batch size: shared state breaks shapes
    forward = lambda x: run(host, model, x)   # noqa: E731
    sequential = [run_alone(forward, x) for x in inputs]
    for (i, _), outputs in run_concurrently(forward, inputs, rounds=2).items():
        assert equal(outputs, sequential[i])


# ---- 5. activation checkpointing ----

def gradients(host: Host, model: nn.Module, x: torch.Tensor) -> dict:
    model.train()
    model.zero_grad()
    sum(o.float().square().mean() for o in host.run(model, x)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# Hosts without activation checkpointing (their row's ``checkpointing`` says why) have no cell.
@pytest.mark.parametrize('host,method', [c for c in cells() if c.values[0].checkpointing is None])
def test_checkpointed_gradients_equal_the_plain_ones(host, method):
    x = host.image(2, 0)
    plain = gradients(host, reduced(host, method), x)
    checkpointed = gradients(host, reduced(host, method, checkpoint=True), x)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


# ---- 6. pickling ----

@pytest.mark.parametrize('host,method', cells())
def test_pickle_and_deepcopy_round_trip(host, method):
    model = reduced(host, method)
    x = host.image(2, 0)
    expected = run(host, model, x)
    assert equal(run(host, pickle.loads(pickle.dumps(model)), x), expected)
    assert equal(run(host, copy.deepcopy(model), x), expected)


# ---- 7. the reduction comes off exactly ----

@pytest.mark.parametrize('host,method', cells(reducing=lambda host: host.remove is not None))
def test_removing_the_reduction_gives_the_hosts_output_exactly(host, method):
    x = host.image(2, 0)
    expected = run(host, host.plain(), x)
    if host.remove is not None:   # patched in place: remove_patch after a reducing forward
        model = reduced(host, method)
        assert not equal(run(host, model, x), expected)
        model = host.remove(model)
        assert type(model) is type(host.plain())
    else:   # built from a config: the same config with no layer reducing
        model = host.build(default_spec(host, method, reduce_layers=()), False)
    assert equal(run(host, model, x), expected)


# ---- no synchronising call ----

SYNCS = frozenset(('item', 'cpu', 'numpy', 'tolist', 'nonzero', 'argwhere', '__bool__', '__int__',
                   '__float__', '__index__'))


class SyncCounter(TorchFunctionMode):
    """Counts the tensor calls that read values back to the host (a sync on an accelerator)."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        if name in SYNCS:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


def syncs(host: Host, model: nn.Module, x: torch.Tensor) -> collections.Counter:
    with SyncCounter() as counter:
        run(host, model, x)
    return counter.calls


@pytest.mark.parametrize('host,method', cells())
def test_a_reducing_forward_adds_no_synchronising_call(host, method):
    x = host.image(2, 0)
    added = syncs(host, reduced(host, method), x) - syncs(host, host.plain(), x)
    assert not added, dict(added)


# ---- refusals and bad settings ----

REFUSED = [pytest.param(host, method, id=f'{host.name}-{method}')
           for host in HOSTS for method in host.refused]


@pytest.mark.parametrize('host,method', REFUSED)
def test_a_refused_method_is_named(host, method):
    with pytest.raises(ValueError) as info:
        reduced(host, method)
    message = str(info.value)
    assert '\n' not in message and f'{host.refused[method]}={method!r}' in message, message


BAD = [
    (dict(method='merge'), "method='merge'"),
    (dict(keep_ratio=1.5), 'keep_ratio=1.5'),
    (dict(reduce_layers=(1, 9)), 'reduce_layers=[9]'),
    (dict(kapa=0.5), 'kapa=0.5'),
]
# host -> bad setting id -> why it is not a ValueError naming the key. None: every host names it.
BAD_KNOWN = {}
BAD_IDS = ['method', 'keep_ratio', 'reduce_layers', 'option']


def bad_cells():
    params = []
    for (bad, needle), case in zip(BAD, BAD_IDS):
        for host in HOSTS:
            why = BAD_KNOWN.get(host.name, {}).get(case)
            marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
            params.append(pytest.param(host, bad, needle, marks=marks, id=f'{host.name}-{case}'))
    return params


@pytest.mark.parametrize('host,bad,needle', bad_cells())
def test_a_bad_setting_raises_a_one_line_value_error_naming_it(host, bad, needle):
    bad = dict(bad)
    with pytest.raises(ValueError) as info:
        host.build(default_spec(host, bad.pop('method', 'transform'), **bad), False)
    message = str(info.value)
    assert '\n' not in message and needle in message, message


def test_the_matrix_covers_every_method_and_names_real_hosts():
    assert {m for h in HOSTS for m in h.refused} <= set(METHODS)
    assert {h for h, _ in KNOWN} | set(BAD_KNOWN) <= {h.name for h in HOSTS}
    assert all(re.fullmatch(r'[a-z0-9_]+', h.name) for h in HOSTS)
