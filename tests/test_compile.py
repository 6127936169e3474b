"""torch.compile on every host: on timm every method traces as one graph (or its listed graph
breaks), gives eager's output, and another batch size costs at most one recompilation (about 90 s on
a 2-core CPU, a third of it the inductor case); every other host does the same for the 'fast' preset
and ToMe (the 'paper' preset on Swin), with the hosts of :mod:`hosts_matrix` (about 150 s)."""
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

# (host, setting) -> (graph breaks torch._dynamo.explain counts, why). Such a case is a strict
# xfail on fullgraph's Unsupported error after its breaks are counted exactly.
HOST_GRAPH_BREAKS = {}
# host -> why only the first batch size is compiled.
ONE_BATCH = {'mmdet_swin': 'the recompilation for a second batch size (a symbolic batch through '
                           'the window partitions) runs for minutes on a 2-core CPU'}


def host_cases():
    """(host, spec) for each host but timm (above): the 'fast' preset and ToMe, or where the host
    refuses those by design (Swin reduces in windows: no ToMe, no 'fast'), the 'paper' preset."""
    from hosts_matrix import HOSTS, default_spec
    params = []
    for host in HOSTS:
        if host.name == 'timm':
            continue
        settings = [('fast', default_spec(host, 'transform', preset='fast')),
                    ('tome', default_spec(host, 'tome'))]
        if host.refused:
            settings = [('paper', default_spec(host, 'transform', preset='paper'))]
        for name, spec in settings:
            breaks = HOST_GRAPH_BREAKS.get((host.name, name))
            marks = [pytest.mark.xfail(strict=True, raises=dynamo.exc.Unsupported, reason=breaks[1])
                     ] if breaks else []
            params.append(pytest.param(host, name, spec, marks=marks, id=f'{host.name}-{name}'))
    return params


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
