"""mmtt.vis: the partition drawing of the demo and the assignment it is read from."""
import numpy as np
import pytest
import timm
import torch

from mmtt.hosts.timm import apply_patch
from mmtt.pretrained import column_shares, record_reductions
from mmtt.vis import partition_colours, partition_image, reduction_assignment

GRID = (3, 4)
# Patches in raster order: groups 0 (three patches), 1 (two, not adjacent) and singletons 2-8.
ASSIGNMENT = np.array([0, 0, 2, 3,
                       0, 1, 4, 5,
                       6, 7, 1, 8])


def photo(height=30, width=40, seed=0):
    return np.random.RandomState(seed).uniform(size=(height, width, 3))


def patch_labels(height, width, grid=GRID, assignment=ASSIGNMENT):
    rows = np.arange(height) * grid[0] // height
    cols = np.arange(width) * grid[1] // width
    return assignment.reshape(grid)[rows[:, None], cols[None, :]]


def test_partition_colours_each_region_with_its_colour():
    image = photo()
    colours = partition_colours(9)
    out = partition_image(image, ASSIGNMENT, GRID, colours=colours, alpha=1.0, outline=False, singletons=True)
    assert out.shape == image.shape and out.dtype == np.float64
    np.testing.assert_array_equal(out, colours[patch_labels(30, 40)])


def test_partition_fills_groups_with_their_mean_photo_colour():
    image = photo()
    labels = patch_labels(30, 40)
    out = partition_image(image, torch.from_numpy(ASSIGNMENT), GRID, alpha=0.0, outline=False)
    for group in range(9):
        region = labels == group
        np.testing.assert_allclose(out[region], np.broadcast_to(image[region].mean(0), out[region].shape))


def test_partition_colours_merged_groups_only_and_outlines_them():
    image = photo()
    colours = partition_colours(9, seed=3)
    out = partition_image(image, ASSIGNMENT, GRID, colours=colours, alpha=0.6)
    labels = patch_labels(30, 40)
    assert out.min() >= 0 and out.max() <= 1
    # A singleton patch shows the photo's mean over it, no colour, no outline.
    single = labels == 2
    np.testing.assert_allclose(out[single], np.broadcast_to(image[single].mean(0), out[single].shape))
    # Group 1's two patches (apart from each other): same fill inside, its colour on the border.
    # Patches (1, 1) and (2, 2) are pixel rows 10-19 and 20-29, columns 10-19 and 20-29.
    fill = 0.4 * image[labels == 1].mean(0) + 0.6 * colours[1]
    for inside in (out[11:19, 11:19], out[21:29, 21:29]):
        np.testing.assert_allclose(inside, np.broadcast_to(fill, inside.shape))
    for border in (out[10, 10:20], out[10:20, 19], out[20:30, 20]):   # next to groups 0, 4 and 7
        np.testing.assert_allclose(border, np.broadcast_to(colours[1], border.shape))


def test_partition_image_checks_its_inputs():
    image = photo()
    with pytest.raises(ValueError, match='12 ints'):
        partition_image(image, ASSIGNMENT[:-1], GRID)
    with pytest.raises(ValueError, match='ints'):
        partition_image(image, ASSIGNMENT.astype(float), GRID)
    with pytest.raises(ValueError, match='colours'):
        partition_image(image, ASSIGNMENT, GRID, colours=partition_colours(5))
    with pytest.raises(ValueError, match='image'):
        partition_image(image[..., 0], ASSIGNMENT, GRID)


@pytest.mark.parametrize('options', [dict(preset='fast'), dict(method='tome', metric='hidden')])
def test_reduction_assignment_is_where_each_patch_sends_most(options):
    torch.manual_seed(0)
    model = timm.create_model('vit_small_patch14_dinov2', pretrained=False, img_size=98, depth=4,
                              embed_dim=96, num_heads=3).eval()
    apply_patch(model, keep_ratio=0.7, layers=(1, 2), recover=True, **options)
    with record_reductions(model) as records, torch.no_grad():
        model(torch.randn(1, 3, 98, 98))
    assignment = reduction_assignment(records[0])
    grid = model.patch_embed.grid_size
    assert assignment.shape == (grid[0] * grid[1],)
    # Each patch goes to a kept token that receives its largest share (random weights tie often).
    shares = column_shares(records[0])[0]
    torch.testing.assert_close(shares.gather(0, assignment[None])[0], shares.max(0).values)
    assert int(assignment.max()) < records[0].reduction.matrix.num_out
    out = partition_image(np.zeros((98, 98, 3)), assignment, grid)
    assert out.shape == (98, 98, 3)


def test_demo_plans_its_settings_and_compares_tome_at_the_nearest_speed():
    from mmtt.tools.demo import FAST, PAPER, TOME, UNMODIFIED, nearest_speed, plan
    points = plan(0.7, [0.6, 0.7, 0.8], paper=True)
    assert [p['label'] for p in points] == [UNMODIFIED, FAST, PAPER, TOME, TOME, TOME]
    assert points[1]['kwargs'] == dict(preset='fast') and points[1]['keep'] == 0.7
    assert all(p['kwargs'] == dict(method='tome', metric='hidden') for p in points[3:])
    assert PAPER not in [p['label'] for p in plan(0.7, [0.7], paper=False)]
    tomes = [dict(keep=0.6, speedup=1.5), dict(keep=0.7, speedup=1.37), dict(keep=0.8, speedup=1.2)]
    assert nearest_speed(tomes, dict(speedup=1.31))['keep'] == 0.7
    assert nearest_speed(tomes, dict(speedup=1.0))['keep'] == 0.8
