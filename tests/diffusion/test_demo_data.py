"""The demo model's procedural data set: deterministic scenes, truthful captions, measurable pictures."""

from __future__ import annotations

import numpy as np
import pytest

from nodes.diffusion.demo_data import (
    COLOURS,
    NEUTRALS,
    OUTLINE_RGB,
    OUTLINE_WIDTH,
    POSITIONS,
    SHAPES,
    SIZES,
    CAPTION_GROUPS,
    caption,
    caption_labels,
    colour_mask,
    dominant_colour,
    hue_class,
    hue_of,
    render,
    render_with_mask,
    sample_scene,
    scene_rng,
    shape_centre,
)


def test_scenes_and_pixels_are_a_function_of_seed_and_index():
    a = [sample_scene(scene_rng(7, i)) for i in range(20)]
    b = [sample_scene(scene_rng(7, i)) for i in range(20)]
    assert a == b
    assert np.array_equal(render(a[3]), render(b[3]))
    other = [sample_scene(scene_rng(8, i)) for i in range(20)]
    assert a != other
    assert len({(s.colour, s.shape, s.position) for s in a}) > 10  # not one scene repeated


def test_every_attribute_value_occurs_and_the_shape_colour_differs_from_the_background():
    scenes = [sample_scene(scene_rng(0, i)) for i in range(1500)]
    assert {s.colour for s in scenes} == set(COLOURS)
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.size for s in scenes} == set(SIZES)
    assert {s.position for s in scenes} == set(POSITIONS)
    assert {s.background for s in scenes} == set(NEUTRALS) | set(COLOURS)
    gradients = sum(s.background_bottom is not None for s in scenes) / len(scenes)
    assert 0.15 < gradients < 0.25
    for s in scenes:
        assert s.colour not in (s.background, s.background_bottom)
        (x0, x1), (y0, y1) = POSITIONS[s.position]
        assert x0 <= s.cx <= x1 and y0 <= s.cy <= y1


def test_full_caption_names_every_attribute():
    scene = sample_scene(scene_rng(0, 1))
    text = caption(scene)
    for word in (scene.colour, scene.shape, scene.size, scene.background):
        assert word in text.split(", ")[0].split() + text.split(", ")[1].split()
    assert text.endswith("background")
    phrase = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom", "center": "in the center"}
    assert phrase[scene.position] in text


def test_random_captions_keep_colour_and_shape_and_drop_the_rest_at_the_designed_rates():
    n = 600
    scenes = [sample_scene(scene_rng(1, i)) for i in range(n)]
    texts = [caption(s, scene_rng(1, i, stream=1)) for i, s in enumerate(scenes)]
    assert all(f"{s.colour} {s.shape}" in t for s, t in zip(scenes, texts))
    no_size = sum(f"a {s.colour}" in t for s, t in zip(scenes, texts)) / n
    no_background = sum("background" not in t for t in texts) / n
    assert 0.18 < no_size < 0.32  # designed 0.25
    assert 0.23 < no_background < 0.37  # designed 0.30


def test_colour_and_shape_can_be_dropped_too():
    n = 600
    drop = (0.0, 0.0, 0.0, 0.3, 0.5)
    scenes = [sample_scene(scene_rng(2, i)) for i in range(n)]
    texts = [caption(s, scene_rng(2, i, stream=1), drop=drop) for i, s in enumerate(scenes)]
    assert all(t.startswith(f"a {s.size} ") and t.endswith("background") for s, t in zip(scenes, texts))
    no_colour = sum(s.colour not in t.split(", ")[0].split() for s, t in zip(scenes, texts)) / n
    no_shape = sum(" shape " in t for t in texts) / n
    assert 0.23 < no_colour < 0.37  # designed 0.3
    assert 0.42 < no_shape < 0.58  # designed 0.5
    assert all((" shape " in t) == (s.shape not in t) for s, t in zip(scenes, texts))
    # the first three draws are the three-way caption's: the same size/position/background choices
    three = [caption(s, scene_rng(2, i, stream=1)) for i, s in enumerate(scenes)]
    five = [caption(s, scene_rng(2, i, stream=1), drop=(0.25, 0.2, 0.3, 0.0, 0.0)) for i, s in enumerate(scenes)]
    assert three == five
    assert caption(scenes[0], scene_rng(2, 0, stream=1), drop=(1.0, 1.0, 1.0, 1.0, 1.0)) == "a shape"


def test_caption_labels_read_back_what_the_caption_says():
    assert list(CAPTION_GROUPS) == ["size", "colour", "shape", "position", "background"]
    unsaid = tuple(len(v) for v in CAPTION_GROUPS.values())
    assert caption_labels("") == unsaid
    assert caption_labels("a small red circle on the left, white background") == (0, 0, 0, 0, 0)
    assert caption_labels("a shape, cyan to black gradient background") == (2, 6, 3, 5, CAPTION_GROUPS["background"].index("cyan"))
    n = 300
    scenes = [sample_scene(scene_rng(5, i)) for i in range(n)]
    for i, scene in enumerate(scenes):
        text = caption(scene, scene_rng(5, i, stream=1), drop=(0.3, 0.3, 0.3, 0.3, 0.3))
        labels = dict(zip(CAPTION_GROUPS, caption_labels(text)))
        truth = {"size": scene.size, "colour": scene.colour, "shape": scene.shape, "position": scene.position, "background": scene.background}
        for group, values in CAPTION_GROUPS.items():
            said = labels[group] < len(values)
            assert said == (f" {truth[group]}" in f" {text}".replace(",", " ")), (text, group)
            if said:
                assert values[labels[group]] == truth[group], (text, group)


def test_the_mask_covers_the_shape_and_nothing_else():
    scene = sample_scene(scene_rng(0, 5))
    picture, mask = render_with_mask(scene)
    assert np.array_equal(picture, render(scene))
    assert mask.shape == (128, 128) and mask.dtype == np.uint8
    inside = mask == 255
    assert inside[int(scene.cy * 128), int(scene.cx * 128)]  # the shape's centre
    ys, xs = np.nonzero(inside)
    assert abs((xs.mean() + 0.5) / 128 - scene.cx) < 0.05 and abs((ys.mean() + 0.5) / 128 - scene.cy) < 0.08
    background = picture[mask == 0].astype(int)
    assert np.abs(background.mean(axis=0) - picture[inside].mean(axis=0)).max() > 30  # the shape differs from what is left


def test_every_shape_has_a_dark_outline_that_the_colour_measurements_ignore():
    for index, shape in enumerate(SHAPES):
        scene = sample_scene(scene_rng(4, index))
        scene = type(scene)(**{**scene.__dict__, "shape": shape, "size": "large", "cx": 0.5, "cy": 0.5,
                               "background": "white", "background_bottom": None})
        picture, mask = render_with_mask(scene)
        row = picture[64].astype(int)  # through the centre, left to right: white, outline, colour, outline, white
        dark = np.nonzero((np.abs(row - OUTLINE_RGB.astype(int)) <= 2).all(axis=1))[0]
        assert dark.size > 0 and dark.min() < 64 < dark.max()
        r = SIZES["large"] * 128 * (0.9 if shape == "square" else 1.0)
        if shape != "triangle":  # the row crosses a circle's and a square's outline square-on: OUTLINE_WIDTH of r thick
            left_band = dark[dark < 64]
            assert abs(left_band.size - OUTLINE_WIDTH * r) <= 2
            assert left_band.min() == pytest.approx(64 - r, abs=1.5)
        assert not colour_mask(picture[dark.min() : dark.min() + 1, dark]).any()  # too dark to count as colour
        assert mask[64, dark.min()] > 0  # the mask covers the outline too
        assert dominant_colour(picture) == scene.colour


def test_colour_names_sit_at_their_own_hue():
    for name, rgb in COLOURS.items():
        assert hue_class(hue_of(rgb)) == name
    for rgb in NEUTRALS.values():
        assert not colour_mask(np.full((4, 4, 3), rgb, dtype=np.uint8)).any()


@pytest.mark.parametrize("index", range(40))
def test_measurements_recover_colour_and_position_from_rendered_pictures(index):
    """The analysis the steering tests use, checked on pictures whose truth is known."""
    rng = scene_rng(3, index)
    scene = sample_scene(rng)
    scene = type(scene)(**{**scene.__dict__, "background": list(NEUTRALS)[index % 3], "background_bottom": None})
    image = render(scene)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert dominant_colour(image) == scene.colour
    cx, cy = shape_centre(image)
    # the triangle's centre of mass is its centroid, which render() puts at (cx, cy); clipping at the
    # border moves it a little
    assert abs(cx - scene.cx) < 0.04 and abs(cy - scene.cy) < 0.06


def test_measurements_return_none_for_a_grey_picture():
    grey = np.full((32, 32, 3), 128, dtype=np.uint8)
    assert dominant_colour(grey) is None and shape_centre(grey) is None
