"""torch.compile on every host x every method it accepts, in one graph and with eager's output.

- timm, every method: traces as one graph (or its listed graph breaks), gives eager's output under
  aot_eager, and another batch size costs at most one recompilation; the inductor backend gives
  eager's output on the paper's setting.
- every other host of :mod:`hosts_matrix`, the 'fast' preset and ToMe (Swin: the 'paper' preset):
  the same with fullgraph (Swin at one batch size).
- every other host x every other method it accepts (the conformance matrix's pairs, 49 today):
  fullgraph under dynamo's tracing alone (backend='eager'), eager's output at batch size 2.

Measured on a shared 2-core CPU (rough): about 250 s for the file, of which about 55 s the
timm tests, 135 s the host settings and 55 s the matrix.
"""
import pytest
import timm
import torch
import torch._dynamo as dynamo
from torch._dynamo.utils import counters

from mmtt.hosts import timm as tt
from mmtt.modules import METHODS

# (method, apply_patch options) for every method the timm host runs; the tiny model's 4x4 grid
# allows Hourglass' clustering at both reductions.
CASES = [('transform', dict(preset='paper')), ('transform', dict(preset='fast'))] + \
    [(m, {}) for m in METHODS if m != 'transform']
IDS = [f'{m}-{kw["preset"]}' if kw else m for m, kw in CASES]

# method -> (graph breaks torch._dynamo.explain counts, why): a method listed here is compiled
# without fullgraph. None today.
GRAPH_BREAKS = {}

BATCHES = (2, 3, 4)   # 1 is specialised by dynamo; each of these is a new batch size


def make(method, options):
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=5, depth=4,
                              img_size=64).eval()
    return tt.apply_patch(model, method=method, keep_ratio=0.7, reduce_layers=(1, 2), **options)


def image(b):
    return torch.randn(b, 3, 64, 64, generator=torch.Generator().manual_seed(b))


def test_cases_cover_every_method():
    assert {m for m, _ in CASES} == set(METHODS)
    assert set(GRAPH_BREAKS) <= set(METHODS)


def test_listed_host_graph_breaks_are_cases():
    # An entry naming no case would mark nothing: a stale one goes.
    ids = {p.id for p in host_cases() + matrix_cases()}
    assert {f'{host}-{setting}' for host, setting in HOST_GRAPH_BREAKS} <= ids


@pytest.mark.parametrize('method,options', CASES, ids=IDS)
def test_compiles_equals_eager_and_recompiles_at_most_once(method, options):
    model = make(method, options)
    dynamo.reset()
    with torch.no_grad():
        explained = dynamo.explain(model.forward_features)(image(BATCHES[0]))
    breaks, why = GRAPH_BREAKS.get(method, (0, None))
    assert explained.graph_break_count == breaks, explained.break_reasons

    dynamo.reset()
    counters.clear()
    compiled = torch.compile(model.forward_features, backend='aot_eager', fullgraph=method not in GRAPH_BREAKS)
    with torch.no_grad():
        for b in BATCHES:
            x = image(b)
            torch.testing.assert_close(compiled(x), model.forward_features(x), rtol=1e-5, atol=1e-5)
    # One graph per frame for the first batch size, one more (with a dynamic batch) for the next.
    assert counters['stats']['unique_graphs'] <= 2 * (breaks + 1), dict(counters['stats'])
    dynamo.reset()


def test_inductor_output_equals_eager():
    """The default backend (C++/Triton code generation) on the paper's setting, recovery on."""
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=5, depth=4,
                              img_size=64).eval()
    tt.apply_patch(model, keep_ratio=0.7, reduce_layers=(1, 2), preset='paper', recover=True)
    dynamo.reset()
    compiled = torch.compile(model.forward_features, fullgraph=True)
    with torch.no_grad():
        x = image(2)
        torch.testing.assert_close(compiled(x), model.forward_features(x), rtol=1e-4, atol=1e-4)
    dynamo.reset()


# ---- every other host: one Token Transforming setting and ToMe each ----

# (host, setting) -> (graph breaks torch._dynamo.explain counts, why), where a setting is one of
# host_settings' names ('fast', 'tome', 'paper') or, for the matrix test at the end, a method.
# Such a case is a strict xfail on fullgraph's Unsupported error after its breaks are counted
# exactly. None today: every host compiles every method it accepts in one graph.
HOST_GRAPH_BREAKS = {}
# host -> why only the first batch size is compiled.
ONE_BATCH = {'mmdet_swin': 'the recompilation for a second batch size (a symbolic batch through '
                           'the window partitions) runs for minutes on a 2-core CPU'}


def host_settings(host):
    """(setting, spec) the host test below compiles on ``host`` (any host but timm, above): the
    'fast' preset and ToMe, or where the host refuses those by design (Swin reduces in windows: no
    ToMe, no 'fast'), the 'paper' preset."""
    from hosts_matrix import default_spec
    if host.refused:
        return [('paper', default_spec(host, 'transform', preset='paper'))]
    return [('fast', default_spec(host, 'transform', preset='fast')), ('tome', default_spec(host, 'tome'))]


def breaks_mark(host, setting):
    """A strict xfail on fullgraph's Unsupported error for a case listed in HOST_GRAPH_BREAKS."""
    breaks = HOST_GRAPH_BREAKS.get((host.name, setting))
    return [pytest.mark.xfail(strict=True, raises=dynamo.exc.Unsupported, reason=breaks[1])] if breaks else []


def host_cases():
    from hosts_matrix import HOSTS
    return [pytest.param(host, name, spec, marks=breaks_mark(host, name), id=f'{host.name}-{name}')
            for host in HOSTS if host.name != 'timm' for name, spec in host_settings(host)]


@pytest.mark.parametrize('host,setting,spec', host_cases())
def test_every_host_compiles_in_one_graph_equals_eager_and_recompiles_at_most_once(host, setting, spec):
    model = host.build(spec, False)
    forward = lambda x: tuple(host.run(model, x))   # noqa: E731
    dynamo.reset()
    with torch.no_grad():
        explained = dynamo.explain(forward)(host.image(BATCHES[0], BATCHES[0]))
    breaks, _ = HOST_GRAPH_BREAKS.get((host.name, setting), (0, None))
    assert explained.graph_break_count == breaks, explained.break_reasons

    dynamo.reset()
    counters.clear()
    compiled = torch.compile(forward, backend='aot_eager', fullgraph=True)
    batches = BATCHES[:1] if host.name in ONE_BATCH else BATCHES
    with torch.no_grad():
        for b in batches:
            x = host.image(b, b)
            torch.testing.assert_close(compiled(x), forward(x), rtol=1e-4, atol=1e-4)
    # One graph for the first batch size, one more (with a dynamic batch) for the next.
    assert counters['stats']['unique_graphs'] <= 2, dict(counters['stats'])
    dynamo.reset()


# ---- every other host x every method it accepts: one graph, eager's output ----

def same_reduction(a, b):
    """Whether two specs are one reduction: naming the default preset changes nothing."""
    from mmtt.modules.presets import DEFAULT_PRESET

    def named(s):
        return s._replace(options=tuple(o for o in s.options if o != ('preset', DEFAULT_PRESET)))
    return named(a) == named(b)


def matrix_cases():
    """The conformance suite's accepted (host, method) pairs, each with its reduction there, less
    those compiled above: timm (every method, first test) and a host's setting that is the
    conformance reduction (ToMe; Swin's 'paper' preset). Refused pairs have no case (their
    refusal is tested there); its known failures (KNOWN) stay strict xfails here."""
    from hosts_matrix import default_spec
    from test_conformance import cells
    params = []
    for cell in cells():
        host, method = cell.values
        spec = default_spec(host, method)
        if host.name == 'timm' or method in host.refused or any(
                same_reduction(spec, compiled) for _, compiled in host_settings(host)):
            continue
        params.append(pytest.param(host, method, spec, marks=[*cell.marks, *breaks_mark(host, method)],
                                   id=cell.id))
    return params


@pytest.mark.parametrize('host,method,spec', matrix_cases())
def test_every_method_on_every_host_compiles_in_one_graph_equals_eager(host, method, spec):
    """Dynamo's tracing alone (backend='eager') decides the graph breaks, at one batch size; the
    host test above adds AOTAutograd and the other batch sizes on one or two settings per host."""
    model = host.build(spec, False)
    forward = lambda x: tuple(host.run(model, x))   # noqa: E731
    x = host.image(BATCHES[0], 0)
    dynamo.reset()
    counters.clear()
    try:
        if (host.name, method) in HOST_GRAPH_BREAKS:
            with torch.no_grad():
                explained = dynamo.explain(forward)(x)
            assert explained.graph_break_count == HOST_GRAPH_BREAKS[host.name, method][0], \
                explained.break_reasons
            dynamo.reset()
        compiled = torch.compile(forward, backend='eager', fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), forward(x), rtol=1e-4, atol=1e-4)
        # fullgraph refuses a break; this shows dynamo traced the forward rather than skipping it.
        assert counters['stats']['unique_graphs'] == 1, dict(counters['stats'])
    finally:
        dynamo.reset()
