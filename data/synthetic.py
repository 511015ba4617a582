"""Synthetic labelled infrared/visible road scenes in the FMB layout.

The scenes are built so that the two modalities genuinely disagree, which is what a segmentation-guided fusion
method has to learn to exploit:

- sky is bright in the visible image and cold (dark) in infrared; lane markings and building windows are visible
  only; sign faces carry text-like strokes in the visible image but are flat in infrared;
- people, cars, trucks, buses and motorcycles are warm (bright) in infrared; a share of the people wear clothes
  matching their background, so they nearly vanish in the visible image;
- night scenes (``night_fraction``) have a dark, noisy visible image with saturated lamp glare and headlights,
  while infrared keeps the warm objects.

Usage::

    python -m data.synthetic --out DIR [--train N] [--test N] [--size W H] [--seed S] [--overwrite]

writes ``DIR/{train,test}/{Infrared,Visible,Label,color}/NNNNN.png``, ``DIR/classes.yaml`` (the 15 FMB class
names) and ``DIR/meta.yaml`` (generator settings and which images are night scenes). The same seed gives
byte-identical files. Each image has its own random stream (seeded from seed, split and index), so a set does
not change when another split's size changes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from data.io import write_image_atomic
from data.layouts import FMB_CLASSES
from data.layouts import colorize_labels as label_to_color
from utils.atomic import atomic_write_text

PathLike = str | os.PathLike

GENERATOR_VERSION = 1
SPLIT_DIRS = ("Infrared", "Visible", "Label", "color")
_SPLIT_CODES = {"train": 0, "test": 1}

# Class indices (FMB order).
UNLABELED, ROAD, SIDEWALK, BUILDING, LAMP, SIGN, VEGETATION, SKY = range(8)
PERSON, CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE, POLE = range(8, 15)
RARE_VEHICLES = (TRUCK, BUS, MOTORCYCLE, BICYCLE)



@dataclass
class Scene:
    """One rendered scene.

    Attributes:
        ir: (H, W) uint8 infrared.
        visible: (H, W, 3) uint8 RGB.
        label: (H, W) uint8 class indices 0..14 (FMB classes).
        night: whether this is a night scene.
    """

    ir: np.ndarray
    visible: np.ndarray
    label: np.ndarray
    night: bool



# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------


class _Canvas:
    """Label map plus the two modalities (float, [0, 1]) and an emissive layer added after night dimming."""

    def __init__(self, height: int, width: int, rng: np.random.Generator) -> None:
        self.h, self.w = height, width
        self.label = np.zeros((height, width), np.uint8)
        self.vis = np.zeros((height, width, 3), np.float32)
        self.ir = np.zeros((height, width), np.float32)
        self.emit = np.zeros((height, width, 3), np.float32)
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        # Independent texture fields for the two modalities so their textures do not simply coincide.
        self.vis_fine = rng.standard_normal((height, width)).astype(np.float32)
        self.vis_smooth = _smooth_noise(rng, height, width, 2.0)
        self.ir_smooth = _smooth_noise(rng, height, width, 3.0)

    def mask(self, draw: Callable[[np.ndarray], Any]) -> np.ndarray:
        canvas = np.zeros((self.h, self.w), np.uint8)
        draw(canvas)
        return canvas.astype(bool)

    def paint(
        self,
        mask: np.ndarray,
        cls: int | None,
        vis: Sequence[float] | np.ndarray | None,
        ir: float | np.ndarray | None,
        vis_texture: float = 0.0,
        ir_texture: float = 0.0,
    ) -> None:
        """Fill ``mask`` in the label (unless cls is None), visible and infrared layers (None leaves a layer)."""
        if not mask.any():
            return
        if cls is not None:
            self.label[mask] = cls
        if vis is not None:
            colour = np.asarray(vis, np.float32)
            values = colour[mask] if colour.ndim == 3 else np.broadcast_to(colour, (int(mask.sum()), 3))
            if vis_texture:
                scale = 1.0 + vis_texture * (0.6 * self.vis_fine[mask] + 0.4 * self.vis_smooth[mask])
                values = values * scale[:, None]
            self.vis[mask] = values
        if ir is not None:
            values = np.asarray(ir, np.float32)
            values = values[mask] if values.ndim == 2 else np.full(int(mask.sum()), values, np.float32)
            if ir_texture:
                values = values + ir_texture * self.ir_smooth[mask]
            self.ir[mask] = values


def _smooth_noise(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    field = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), sigma)
    return field / max(float(field.std()), 1e-6)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def _poly(points: Sequence[tuple[float, float]]) -> Callable[[np.ndarray], Any]:
    array = np.round(np.asarray(points, np.float64)).astype(np.int32)
    return lambda m: cv2.fillPoly(m, [array], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> Callable[[np.ndarray], Any]:
    return lambda m: cv2.rectangle(m, _pt(x0, y0), _pt(x1, y1), 1, -1)


def _ellipse(cx: float, cy: float, ax: float, ay: float) -> Callable[[np.ndarray], Any]:
    return lambda m: cv2.ellipse(m, _pt(cx, cy), (max(1, round(ax)), max(1, round(ay))), 0, 0, 360, 1, -1)


def _ring(cx: float, cy: float, r: float, thickness: int) -> Callable[[np.ndarray], Any]:
    return lambda m: cv2.circle(m, _pt(cx, cy), max(1, round(r)), 1, thickness)


def _line(x0: float, y0: float, x1: float, y1: float, thickness: float) -> Callable[[np.ndarray], Any]:
    return lambda m: cv2.line(m, _pt(x0, y0), _pt(x1, y1), 1, max(1, round(thickness)))


class _SceneBuilder:
    """Draws one road scene; all geometry scales with the distance below the horizon (simple perspective)."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, night: bool, rare: int) -> None:
        self.rng, self.w, self.h, self.night, self.rare = rng, width, height, night, rare
        self.c = _Canvas(height, width, rng)
        self.horizon = height * rng.uniform(0.36, 0.48)
        self.vx = width * rng.uniform(0.4, 0.6)
        self.road_top = width * rng.uniform(0.015, 0.04)  # half-width of the road at the horizon
        self.road_bottom = width * rng.uniform(0.32, 0.5)  # half-width at the bottom row
        self.bottom_cx = self.vx + width * rng.uniform(-0.12, 0.12)
        self.walk_top, self.walk_bottom = width * 0.01, width * rng.uniform(0.1, 0.18)
        self.ambient = 0.0 if night else 0.08  # sun-heated surfaces are warmer by day
        self.lamps: list[tuple[float, float, float]] = []
        self.headlights: list[tuple[float, float, float]] = []

    # -- geometry ----------------------------------------------------------------------------------------------

    def depth(self, y: float) -> float:
        """0 at the horizon, 1 at the bottom row."""
        return float(np.clip((y - self.horizon) / (self.h - self.horizon), 0.0, 1.0))

    def road_edges(self, y: float) -> tuple[float, float]:
        s = self.depth(y)
        centre = self.vx + (self.bottom_cx - self.vx) * s
        half = self.road_top + (self.road_bottom - self.road_top) * s
        return centre - half, centre + half

    def walk_width(self, y: float) -> float:
        return self.walk_top + (self.walk_bottom - self.walk_top) * self.depth(y)

    def ground_y(self, low: float = 0.08, high: float = 1.0) -> float:
        # u ** 0.7 leans towards the near rows, so that objects stay large enough to see at small image sizes.
        return self.horizon + (self.h - self.horizon) * (low + (high - low) * self.rng.uniform() ** 0.7)

    # -- background --------------------------------------------------------------------------------------------

    def background(self) -> None:
        c, rng, hz = self.c, self.rng, self.horizon
        t = np.clip(c.yy / max(hz, 1.0), 0, 1)[..., None]
        if self.night:
            sky_vis = np.array([0.03, 0.04, 0.10]) * (1 - t) + np.array([0.08, 0.08, 0.12]) * t
        else:
            top = np.array([0.35, 0.55, 0.92]) * rng.uniform(0.9, 1.1)
            sky_vis = top * (1 - t) + np.array([0.78, 0.86, 0.95]) * t
        sky_ir = 0.05 + 0.08 * t[..., 0]
        c.paint(c.mask(_rect(0, 0, self.w, hz)), SKY, sky_vis.astype(np.float32), sky_ir.astype(np.float32))
        # Unlabelled terrain everywhere below the horizon; road and sidewalks cover most of it.
        terrain = np.array([0.42, 0.38, 0.30]) * rng.uniform(0.8, 1.15)
        c.paint(c.mask(_rect(0, hz, self.w, self.h)), UNLABELED, terrain, 0.36 + self.ambient,
                vis_texture=0.25, ir_texture=0.03)

    def buildings(self) -> None:
        c, rng, hz = self.c, self.rng, self.horizon
        x = -rng.uniform(0, 0.1) * self.w
        while x < self.w:
            width = self.w * rng.uniform(0.08, 0.22)
            if rng.uniform() < 0.2:  # gap in the row
                x += width * 0.6
                continue
            top = hz - hz * rng.uniform(0.25, 0.85)
            bottom = hz + (self.h - hz) * 0.04
            facade = np.array([(0.62, 0.56, 0.48), (0.55, 0.55, 0.57), (0.55, 0.32, 0.25), (0.75, 0.72, 0.62),
                               (0.40, 0.42, 0.45)][rng.integers(5)]) * rng.uniform(0.85, 1.1)
            ir_level = rng.uniform(0.3, 0.42) + self.ambient * 0.5
            region = c.mask(_rect(x, top, x + width, bottom))
            c.paint(region, BUILDING, facade, ir_level, vis_texture=0.08, ir_texture=0.015)
            # Window grid: glass in the visible image; barely different in infrared. Computed on the bounding box.
            py, px = max(3.0, width * rng.uniform(0.12, 0.2)), max(3.0, width * rng.uniform(0.12, 0.22))
            box = (slice(max(0, int(top)), max(0, int(bottom) + 1)), slice(max(0, int(x)), max(0, int(x + width) + 1)))
            dy, dx = c.yy[box] - top, c.xx[box] - x
            windows = np.zeros_like(region)
            windows[box] = region[box] & (dy % py > py * 0.35) & (dx % px > px * 0.3) & (c.yy[box] < bottom - py * 0.5)
            if self.night:
                lit = np.zeros_like(region)
                lit[box] = windows[box] & (_hash_cells(dy, dx, py, px, rng) < 0.35)
                c.paint(windows, None, (0.08, 0.08, 0.1), ir_level - 0.03)
                c.emit[lit] += np.array([0.55, 0.48, 0.25], np.float32)
                c.ir[lit] += 0.04
            else:
                c.paint(windows, None, np.array([0.18, 0.22, 0.28]) * rng.uniform(0.8, 1.3), ir_level - 0.04)
            x += width + self.w * rng.uniform(0.0, 0.03)

    def bushes(self) -> None:
        c, rng = self.c, self.rng
        for _ in range(rng.integers(1, 4)):
            y = self.horizon + (self.h - self.horizon) * rng.uniform(0.0, 0.08)
            side = rng.choice([-1, 1])
            left, right = self.road_edges(y)
            x = (left - rng.uniform(0.05, 0.4) * self.w) if side < 0 else (right + rng.uniform(0.05, 0.4) * self.w)
            ax, ay = self.w * rng.uniform(0.05, 0.14), self.h * rng.uniform(0.03, 0.08)
            green = np.array([0.18, 0.42, 0.14]) * rng.uniform(0.7, 1.2)
            c.paint(c.mask(_ellipse(x, y - ay * 0.5, ax, ay)), VEGETATION, green, 0.33 + self.ambient * 0.3,
                    vis_texture=0.6, ir_texture=0.05)

    def road_and_walks(self) -> None:
        c, rng, hz, h = self.c, self.rng, self.horizon, self.h
        (lt, rt), (lb, rb) = self.road_edges(hz), self.road_edges(h)
        asphalt = 0.30 * rng.uniform(0.8, 1.2)
        road = c.mask(_poly([(lt, hz), (rt, hz), (rb, h), (lb, h)]))
        c.paint(road, ROAD, (asphalt, asphalt, asphalt * 1.03), 0.42 + 1.2 * self.ambient,
                vis_texture=0.2, ir_texture=0.03)
        wt, wb = self.walk_top, self.walk_bottom
        slab = 0.62 * rng.uniform(0.85, 1.1)
        left_walk = [(lt - wt, hz), (lt, hz), (lb, h), (lb - wb, h)]
        right_walk = [(rt, hz), (rt + wt, hz), (rb + wb, h), (rb, h)]
        for poly in (left_walk, right_walk):
            walk = c.mask(_poly(poly)) & ~road
            c.paint(walk, SIDEWALK, (slab, slab * 0.98, slab * 0.95), 0.38 + self.ambient,
                    vis_texture=0.12, ir_texture=0.02)
            joints = walk & ((c.yy.astype(np.int32) % max(3, h // 20)) == 0)  # paving joints, visible only
            c.vis[joints] *= 0.75
        # Dashed centre line: paint in the visible image only (the label stays road).
        n_dash = 8
        for k in range(n_dash):
            y0 = hz + (h - hz) * (k / n_dash) ** 1.6
            y1 = hz + (h - hz) * ((k + 0.5) / n_dash) ** 1.6
            x0, x1 = sum(self.road_edges(y0)) / 2, sum(self.road_edges(y1)) / 2
            dash = c.mask(_line(x0, y0, x1, y1, 1 + 2 * self.depth(y1))) & road
            c.paint(dash, None, (0.92, 0.92, 0.88), None)
            c.ir[dash] -= 0.02

    # -- objects -----------------------------------------------------------------------------------------------

    def pole(self, y: float, x: float, with_lamp: bool, with_sign: bool) -> None:
        c, rng, s = self.c, self.rng, self.depth(y)
        height = self.h * (0.25 + 0.55 * s)
        thick = max(1.0, self.w * 0.008 * (0.3 + s))
        top = y - height
        c.paint(c.mask(_line(x, y, x, top, thick)), POLE, (0.38, 0.38, 0.40), 0.30 + self.ambient * 0.5)
        if with_lamp:
            arm = self.w * 0.05 * (0.3 + s) * rng.choice([-1, 1])
            c.paint(c.mask(_line(x, top, x + arm, top, max(1.0, thick * 0.7))), POLE, (0.38, 0.38, 0.40), 0.3)
            lx, ly = x + arm, top + thick
            r = max(1.5, self.w * 0.012 * (0.3 + s))
            lamp = c.mask(_ellipse(lx, ly, r * 1.3, r * 0.8))
            if self.night:
                c.paint(lamp, LAMP, (0.9, 0.88, 0.8), 0.72)
                c.emit[lamp] += 1.0
                self.lamps.append((lx, ly, r))
            else:
                c.paint(lamp, LAMP, (0.78, 0.78, 0.74), 0.4)
        if with_sign:
            sw, sh = self.w * 0.06 * (0.35 + s), self.h * 0.06 * (0.35 + s)
            sy = top + height * rng.uniform(0.15, 0.45)
            self.sign(x - sw / 2, sy, sw, sh)

    def sign(self, x0: float, y0: float, width: float, height: float) -> None:
        """Sign face: text-like strokes in the visible image, one flat temperature in infrared."""
        c, rng = self.c, self.rng
        face = c.mask(_rect(x0, y0, x0 + width, y0 + height))
        background, ink = [((0.92, 0.92, 0.9), (0.05, 0.05, 0.05)), ((0.1, 0.3, 0.75), (0.95, 0.95, 0.95)),
                           ((0.1, 0.5, 0.25), (0.95, 0.95, 0.95)), ((0.95, 0.8, 0.1), (0.05, 0.05, 0.05))][
            rng.integers(4)]
        c.paint(face, SIGN, background, 0.38 + self.ambient * 0.3)
        # Strokes: rows of short bars, like lines of lettering.
        rows = max(1, int(height // 3))
        row_h = height / (rows + 0.5)
        strokes = np.zeros((self.h, self.w), np.uint8)
        for r in range(rows):
            ys = y0 + row_h * (r + 0.4)
            xs = x0 + 1
            while xs < x0 + width - 1:
                length = rng.uniform(0.8, 2.5)
                cv2.rectangle(strokes, _pt(xs, ys), _pt(xs + length, ys + max(0.6, row_h * 0.45)), 1, -1)
                xs += length + rng.uniform(1.0, 2.2)
        text = face & strokes.astype(bool)
        c.vis[text] = np.asarray(ink, np.float32)

    def tree(self, y: float, x: float) -> None:
        c, rng, s = self.c, self.rng, self.depth(y)
        height = self.h * (0.2 + 0.45 * s)
        trunk = max(1.0, self.w * 0.01 * (0.3 + s))
        green = np.array([0.16, 0.40, 0.12]) * rng.uniform(0.7, 1.25)
        ir_level = 0.32 + self.ambient * 0.3
        c.paint(c.mask(_line(x, y, x, y - height * 0.6, trunk)), VEGETATION, (0.3, 0.22, 0.14), ir_level)
        crown = c.mask(_ellipse(x, y - height * 0.7, height * rng.uniform(0.22, 0.35), height * 0.3))
        c.paint(crown, VEGETATION, green, ir_level, vis_texture=0.7, ir_texture=0.05)

    def person(self, y: float, x: float) -> None:
        c, rng, s = self.c, self.rng, self.depth(y)
        height = self.h * (0.1 + 0.5 * s)
        width = height * 0.3
        body = c.mask(_ellipse(x, y - height * 0.55, width * 0.5, height * 0.27))
        legs = c.mask(_line(x - width * 0.2, y, x - width * 0.15, y - height * 0.35, max(1.0, width * 0.25)))
        legs |= c.mask(_line(x + width * 0.2, y, x + width * 0.15, y - height * 0.35, max(1.0, width * 0.25)))
        head = c.mask(_ellipse(x, y - height * 0.88, width * 0.3, height * 0.1))
        figure = body | legs | head
        if self.night or rng.uniform() < 0.35:
            # Camouflaged: clothes match what is behind the person, so the visible image nearly loses them.
            behind = c.vis[figure].mean(axis=0) if figure.any() else np.full(3, 0.4, np.float32)
            clothes = behind * rng.uniform(0.9, 1.1)
            skin = clothes
        else:
            clothes = np.array([(0.7, 0.1, 0.1), (0.1, 0.2, 0.6), (0.85, 0.85, 0.8), (0.15, 0.15, 0.15),
                                (0.8, 0.6, 0.1)][rng.integers(5)]) * rng.uniform(0.8, 1.1)
            skin = np.array([0.85, 0.65, 0.5]) * rng.uniform(0.6, 1.1)
        warm = rng.uniform(0.78, 0.88)
        c.paint(body | legs, PERSON, clothes, warm, vis_texture=0.1, ir_texture=0.02)
        c.paint(head, PERSON, skin, min(1.0, warm + 0.1))

    def car(self, y: float, x: float, cls: int = CAR) -> None:
        c, rng, s = self.c, self.rng, self.depth(y)
        scale = {CAR: 1.0, TRUCK: 1.5, BUS: 1.9}[cls]
        width = self.w * 0.22 * (0.1 + s) * scale
        height = width * {CAR: 0.55, TRUCK: 0.85, BUS: 0.75}[cls]
        x0, y1 = x - width / 2, y - height * 0.12
        colours = [(0.7, 0.1, 0.1), (0.1, 0.15, 0.45), (0.85, 0.85, 0.85), (0.08, 0.08, 0.08), (0.5, 0.5, 0.52),
                   (0.9, 0.75, 0.1)]
        paint = np.array(colours[rng.integers(len(colours))]) * rng.uniform(0.85, 1.1)
        if self.night and rng.uniform() < 0.5:
            paint = np.array([0.06, 0.06, 0.07])  # dark car, invisible at night except for its lights
        body_ir = rng.uniform(0.5, 0.6) + self.ambient * 0.5
        if cls == CAR:
            lower = c.mask(_rect(x0, y1 - height * 0.5, x0 + width, y1))
            cabin = c.mask(_poly([(x0 + width * 0.18, y1 - height * 0.5), (x0 + width * 0.3, y1 - height),
                                  (x0 + width * 0.72, y1 - height), (x0 + width * 0.85, y1 - height * 0.5)]))
            glass = cabin & ~c.mask(_rect(x0, y1 - height, x0 + width, y1 - height * 0.88))
            shell = lower | cabin
        else:
            top = y1 - height
            cab_w = width * (0.3 if cls == TRUCK else 1.0)
            shell = c.mask(_rect(x0, top, x0 + width, y1))
            glass = c.mask(_rect(x0 + width * 0.04, top + height * 0.12, x0 + cab_w - width * 0.04,
                                 top + height * (0.4 if cls == BUS else 0.45)))
            if cls == BUS:
                pillars = (c.xx.astype(np.int32) % max(3, int(width / 8))) == 0
                glass &= ~pillars
        c.paint(shell, cls, paint, body_ir, vis_texture=0.05)
        c.paint(glass, None, (0.12, 0.14, 0.18), body_ir - 0.12)
        # Hot engine bay and tyres.
        engine = shell & (c.xx > x0 + width * 0.75) & (c.yy > y1 - height * 0.45)
        c.ir[engine] = np.minimum(1.0, c.ir[engine] + rng.uniform(0.2, 0.32))
        wheel_r = max(1.0, height * (0.18 if cls == CAR else 0.14))
        for wx in (x0 + width * 0.2, x0 + width * 0.8):
            wheel = c.mask(_ellipse(wx, y1, wheel_r, wheel_r))
            c.paint(wheel, cls, (0.05, 0.05, 0.05), 0.85)
        if self.night:
            r = max(1.0, wheel_r * 0.6)
            for lx in (x0 + width * 0.08, x0 + width * 0.92):
                light = c.mask(_ellipse(lx, y1 - height * 0.3, r, r * 0.7)) & shell
                c.emit[light] += 1.0
                self.headlights.append((lx, y1 - height * 0.3, r))

    def two_wheeler(self, y: float, x: float, cls: int) -> None:
        c, rng, s = self.c, self.rng, self.depth(y)
        length = self.w * 0.09 * (0.15 + s)
        r = max(1.5, length * 0.22)
        thick = max(1, round(r * 0.35))
        x0, x1 = x - length / 2 + r, x + length / 2 - r
        frame = c.mask(_ring(x0, y - r, r, thick)) | c.mask(_ring(x1, y - r, r, thick))
        frame |= c.mask(_line(x0, y - r, (x0 + x1) / 2, y - 2.2 * r, thick))
        frame |= c.mask(_line((x0 + x1) / 2, y - 2.2 * r, x1, y - r, thick))
        frame |= c.mask(_line(x0, y - r, x1, y - 2.4 * r, thick))
        if cls == MOTORCYCLE:
            tank = c.mask(_ellipse((x0 + x1) / 2, y - 1.7 * r, length * 0.25, r * 0.55))
            c.paint(frame | tank, MOTORCYCLE, np.array([0.15, 0.15, 0.18]) * rng.uniform(0.5, 3), 0.62)
            c.ir[tank] = 0.92  # engine
        else:
            c.paint(frame, BICYCLE, np.array([0.6, 0.1, 0.1]) * rng.uniform(0.3, 1.4), 0.31 + self.ambient * 0.3)

    # -- assembly ----------------------------------------------------------------------------------------------

    def objects(self) -> None:
        rng = self.rng
        items: list[tuple[float, Callable[[], None]]] = []

        def on_walk(y: float, outer: float = 0.6) -> float:
            left, right = self.road_edges(y)
            if rng.uniform() < 0.5:
                return left - self.walk_width(y) * rng.uniform(0.2, outer)
            return right + self.walk_width(y) * rng.uniform(0.2, outer)

        def on_road(y: float) -> float:
            left, right = self.road_edges(y)
            return left + (right - left) * rng.uniform(0.2, 0.8)

        n_poles = int(rng.integers(2, 5))
        for k in range(n_poles):
            y = self.ground_y(0.1, 0.9)
            lamp, sign = k == 0 or rng.uniform() < 0.5, k == 1 or rng.uniform() < 0.3
            items.append((y, lambda y=y, x=on_walk(y, 0.9), a=lamp, b=sign: self.pole(y, x, a, b)))
        for _ in range(int(rng.integers(1, 4))):
            y = self.ground_y(0.05, 0.7)
            items.append((y, lambda y=y, x=on_walk(y, 1.8): self.tree(y, x)))
        for _ in range(int(rng.integers(1, 4))):
            y = self.ground_y(0.15, 1.0)
            x = on_walk(y) if rng.uniform() < 0.7 else on_road(y)
            items.append((y, lambda y=y, x=x: self.person(y, x)))
        for _ in range(int(rng.integers(1, 3))):
            y = self.ground_y(0.15, 0.95)
            items.append((y, lambda y=y, x=on_road(y): self.car(y, x, CAR)))
        rare = [self.rare] + [v for v in RARE_VEHICLES if v != self.rare and rng.uniform() < 0.25]
        for cls in rare:
            y = self.ground_y(0.25, 0.9)
            if cls in (TRUCK, BUS):
                items.append((y, lambda y=y, x=on_road(y), cls=cls: self.car(y, x, cls)))
            else:
                x = on_road(y) if rng.uniform() < 0.5 else on_walk(y)
                items.append((y, lambda y=y, x=x, cls=cls: self.two_wheeler(y, x, cls)))
        for _, draw in sorted(items, key=lambda item: item[0]):  # far to near: nearer objects occlude
            draw()

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        c, rng = self.c, self.rng
        ir = cv2.GaussianBlur(c.ir, (0, 0), rng.uniform(0.7, 1.1))  # thermal optics are softer
        column_noise = rng.normal(0, 0.008, size=(1, self.w)).astype(np.float32)  # fixed-pattern stripes
        ir = ir + column_noise + rng.normal(0, 0.012, size=ir.shape).astype(np.float32)
        vis = c.vis
        if self.night:
            vis = vis * rng.uniform(0.15, 0.3) + c.emit
            glare = [(x, y, r * rng.uniform(2.5, 4.5), 1.3) for x, y, r in self.lamps]
            glare += [(x, y, r * rng.uniform(1.5, 2.5), 1.0) for x, y, r in self.headlights]
            for x, y, sigma, amplitude in glare:  # saturating glare around light sources
                blob = np.exp(-((c.xx - x) ** 2 + (c.yy - y) ** 2) / (2 * sigma**2)) * amplitude
                vis = vis + blob[..., None] * np.array([1.0, 0.9, 0.65], np.float32)
            vis = vis + rng.normal(0, rng.uniform(0.03, 0.06), size=vis.shape).astype(np.float32)
        else:
            vis = vis * rng.uniform(0.85, 1.1) + rng.normal(0, 0.012, size=vis.shape).astype(np.float32)
        vis = cv2.GaussianBlur(vis.astype(np.float32), (0, 0), 0.5)
        to_u8 = lambda a: np.rint(np.clip(a, 0.0, 1.0) * 255).astype(np.uint8)  # noqa: E731
        return to_u8(ir), to_u8(vis)


def _hash_cells(dy: np.ndarray, dx: np.ndarray, py: float, px: float, rng: np.random.Generator) -> np.ndarray:
    """A random value per window cell (constant within the cell), for lit / unlit windows."""
    a, b = rng.uniform(10, 100, size=2)
    cell = np.floor(dy / py) * a + np.floor(dx / px) * b
    return (np.sin(cell) * 43758.5453) % 1.0


def render_scene(
    rng: np.random.Generator,
    width: int = 160,
    height: int = 120,
    night: bool | None = None,
    rare_vehicle: int | None = None,
    night_fraction: float = 0.3,
) -> Scene:
    """Render one synthetic road scene.

    Args:
        rng: numpy generator; the scene is a pure function of its state.
        width, height: image size in pixels.
        night: force a day / night scene; None draws it with probability ``night_fraction``.
        rare_vehicle: one of truck (10), bus (11), motorcycle (12), bicycle (13) that the scene surely contains
            (others appear with probability 1/4 each); None draws one.
        night_fraction: probability of a night scene when ``night`` is None.

    Returns:
        :class:`Scene` with uint8 infrared, RGB visible and label images.
    """
    if width < 16 or height < 16:
        raise ValueError(f"scene size must be at least 16x16, got {width}x{height}")
    is_night = bool(rng.uniform() < night_fraction) if night is None else bool(night)
    rare = int(rng.choice(RARE_VEHICLES)) if rare_vehicle is None else int(rare_vehicle)
    builder = _SceneBuilder(rng, width, height, is_night, rare)
    builder.background()
    builder.buildings()
    builder.bushes()
    builder.road_and_walks()
    builder.objects()
    ir, vis = builder.finish()
    return Scene(ir=ir, visible=vis, label=builder.c.label.copy(), night=is_night)


# ----------------------------------------------------------------------------------------------------------------
# Dataset on disk
# ----------------------------------------------------------------------------------------------------------------


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, int(seed), _SPLIT_CODES[split], index]))


def _meta_settings(n_train: int, n_test: int, size: tuple[int, int], seed: int, night_fraction: float) -> dict:
    return {"generator": "data.synthetic", "version": GENERATOR_VERSION, "seed": int(seed),
            "size": [int(size[0]), int(size[1])], "train": int(n_train), "test": int(n_test),
            "night_fraction": float(night_fraction)}


def _is_up_to_date(out: Path, settings: dict) -> bool:
    meta_path = out / "meta.yaml"
    if not meta_path.is_file():
        return False
    try:
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return False
    if {k: meta.get(k) for k in settings} != settings:
        return False
    for split, entries in (meta.get("files") or {}).items():
        for entry in entries:
            if not all((out / split / sub / f"{entry['name']}.png").is_file() for sub in SPLIT_DIRS):
                return False
    return True


def generate_dataset(
    out: PathLike,
    n_train: int = 200,
    n_test: int = 40,
    size: tuple[int, int] = (160, 120),
    seed: int = 0,
    *,
    night_fraction: float = 0.3,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a synthetic FMB-layout dataset.

    Files: ``out/{train,test}/{Infrared,Visible,Label,color}/NNNNN.png`` (names numbered across both splits:
    train 00000.., test after it), ``out/classes.yaml``, ``out/meta.yaml``. Every file is written atomically.

    Args:
        out: destination folder; must be empty or absent unless ``overwrite`` (then stale ``*.png`` files in the
            eight image folders are removed). A folder already holding this exact set is left as it is.
        n_train, n_test: number of pairs per split.
        size: (width, height).
        seed: random seed; equal seeds give byte-identical files.
        night_fraction: share of night scenes.

    Returns:
        The metadata written to meta.yaml (settings plus per-file ``name`` and ``night``), with ``skipped`` True
        when the folder was already up to date.

    Raises:
        FileExistsError: ``out`` is not empty and ``overwrite`` is False.
    """
    out = Path(out)
    width, height = int(size[0]), int(size[1])
    if n_train < 0 or n_test < 0:
        raise ValueError("n_train and n_test must be >= 0")
    settings = _meta_settings(n_train, n_test, (width, height), seed, night_fraction)
    if out.is_dir() and any(out.iterdir()):
        if _is_up_to_date(out, settings):
            meta = yaml.safe_load((out / "meta.yaml").read_text(encoding="utf-8"))
            meta["skipped"] = True
            return meta
        if not overwrite:
            raise FileExistsError(f"'{out}' is not empty; choose an empty folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[dict[str, Any]]] = {}
    written: set[Path] = set()
    counter = 0
    for split, count in (("train", n_train), ("test", n_test)):
        entries = []
        for index in range(count):
            name = f"{counter:05d}"
            scene = render_scene(_scene_rng(seed, split, index), width, height,
                                 rare_vehicle=RARE_VEHICLES[counter % len(RARE_VEHICLES)],
                                 night_fraction=night_fraction)
            images = (scene.ir, scene.visible, scene.label, label_to_color(scene.label))
            for sub, image in zip(SPLIT_DIRS, images, strict=True):
                written.add(write_image_atomic(out / split / sub / f"{name}.png", image))
            entries.append({"name": name, "night": scene.night})
            counter += 1
        files[split] = entries
        for sub in SPLIT_DIRS:
            (out / split / sub).mkdir(parents=True, exist_ok=True)
    if overwrite:
        for split in ("train", "test"):
            for sub in SPLIT_DIRS:
                for stale in sorted((out / split / sub).glob("*.png")):
                    if stale not in written:
                        stale.unlink()
    atomic_write_text(out / "classes.yaml", yaml.safe_dump(list(FMB_CLASSES), sort_keys=False))
    meta = {**settings, "files": files}
    atomic_write_text(out / "meta.yaml", yaml.safe_dump(meta, sort_keys=False))
    return {**meta, "skipped": False}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="destination folder (empty or absent)")
    parser.add_argument("--train", type=int, default=200, help="number of training pairs (default 200)")
    parser.add_argument("--test", type=int, default=40, help="number of test pairs (default 40)")
    parser.add_argument("--size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"),
                        help="image size (default 160 120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--night-fraction", type=float, default=0.3)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        meta = generate_dataset(args.out, args.train, args.test, tuple(args.size), args.seed,
                                night_fraction=args.night_fraction, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if meta["skipped"]:
        print(f"{args.out} already holds this synthetic set (same settings); nothing written")
        return 0
    nights = sum(e["night"] for entries in meta["files"].values() for e in entries)
    print(f"wrote {args.train} train + {args.test} test pairs ({nights} night scenes), "
          f"{args.size[0]}x{args.size[1]}, to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
