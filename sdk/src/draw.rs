//! A small raster canvas for the pictures the SDK writes (loss curves, labelled panels):
//! filled rectangles, lines, and text in a built-in 5x7 bitmap font. No font files, no
//! system libraries.

use dinoedge_runtime::RgbImage;

pub type Rgb = [u8; 3];

pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
pub const GRAY: Rgb = [200, 200, 200];
pub const DARK: Rgb = [90, 90, 90];
/// Distinct line colours (Tableau 10).
pub const PALETTE: [Rgb; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];

pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, bg: Rgb) -> Self {
        Canvas {
            width,
            height,
            data: bg
                .iter()
                .copied()
                .cycle()
                .take(width * height * 3)
                .collect(),
        }
    }

    pub fn into_image(self) -> RgbImage {
        RgbImage {
            width: self.width,
            height: self.height,
            data: self.data,
        }
    }

    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.data[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, c: Rgb) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, c);
            }
        }
    }

    /// A line `thick` pixels wide (Bresenham with a square pen).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb, thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let r0 = -(thick - 1) / 2;
        loop {
            for oy in r0..r0 + thick {
                for ox in r0..r0 + thick {
                    self.set(x + ox, y + oy, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text with its top-left corner at (x, y); each font pixel drawn `scale x scale`.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb, scale: i64) {
        for (k, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (ry, row) in rows.iter().enumerate() {
                for rx in 0..5 {
                    if row & (1 << (4 - rx)) != 0 {
                        self.rect(
                            x + (k as i64 * 6 + rx) * scale,
                            y + ry as i64 * scale,
                            scale,
                            scale,
                            c,
                        );
                    }
                }
            }
        }
    }

    /// Width in pixels of `s` drawn at `scale`.
    pub fn text_width(s: &str, scale: i64) -> i64 {
        (s.chars().count() as i64 * 6 - 1).max(0) * scale
    }

    /// Copies `img` with its top-left corner at (x, y).
    pub fn blit(&mut self, img: &RgbImage, x: i64, y: i64) {
        for r in 0..img.height {
            for col in 0..img.width {
                let i = (r * img.width + col) * 3;
                self.set(
                    x + col as i64,
                    y + r as i64,
                    [img.data[i], img.data[i + 1], img.data[i + 2]],
                );
            }
        }
    }
}

/// 5x7 glyphs, one string of 7 rows of 5 cells per character ('#' = ink).
const FONT: &[(char, &str)] = &[
    ('0', ".###.#...##..###.#.###..##...#.###."),
    ('1', "..#...##....#....#....#....#...###."),
    ('2', ".###.#...#....#...#...#...#...#####"),
    ('3', "#####...#...#.....#.....##...#.###."),
    ('4', "...#...##..#.#.#..#.#####...#....#."),
    ('5', "######....####.....#....##...#.###."),
    ('6', "..##..#...#....####.#...##...#.###."),
    ('7', "#####....#...#...#...#....#....#..."),
    ('8', ".###.#...##...#.###.#...##...#.###."),
    ('9', ".###.#...##...#.####....#...#..##.."),
    ('a', "...........###.....#.#####...#.####"),
    ('b', "#....#....#.##.##..##...##...#####."),
    ('c', "...........###.#....#....#...#.###."),
    ('d', "....#....#.##.##..###...##...#.####"),
    ('e', "...........###.#...#######.....###."),
    ('f', "..##..#..#.#...###...#....#....#..."),
    ('g', "......#####...##...#.####....#.###."),
    ('h', "#....#....#.##.##..##...##...##...#"),
    ('i', "..#........##....#....#....#...###."),
    ('j', "...#........##....#....#.#..#..##.."),
    ('k', "#....#....#..#.#.#..##...#.#..#..#."),
    ('l', ".##....#....#....#....#....#...###."),
    ('m', "..........##.#.#.#.##.#.##...##...#"),
    ('n', "..........#.##.##..##...##...##...#"),
    ('o', "...........###.#...##...##...#.###."),
    ('p', "..........####.#...#####.#....#...."),
    ('q', "...........##.##..##.####....#....#"),
    ('r', "..........#.##.##..##....#....#...."),
    ('s', "...........###.#.....###.....#####."),
    ('t', ".#....#...###...#....#....#..#..##."),
    ('u', "..........#...##...##...##..##.##.#"),
    ('v', "..........#...##...##...#.#.#...#.."),
    ('w', "..........#...##...##.#.##.#.#.#.#."),
    ('x', "..........#...#.#.#...#...#.#.#...#"),
    ('y', "..........#...##...#.####....#.###."),
    ('z', "..........#####...#...#...#...#####"),
    ('.', "..........................##...##.."),
    (',', ".....................##....#...#..."),
    ('-', "...............#####..............."),
    ('+', ".......#....#..#####..#....#......."),
    (':', "......##...##........##...##......."),
    ('/', ".........#...#...#...#...#........."),
    ('(', "...#...#...#....#....#.....#.....#."),
    (')', ".#.....#.....#....#....#...#...#..."),
    ('=', "..........#####.....#####.........."),
    ('_', "..............................#####"),
    ('%', "##...##..#...#...#...#...#..##...##"),
    ('|', "..#....#....#....#....#....#....#.."),
    ('>', ".#.....#.....#.....#...#...#...#..."),
    ('<', "...#...#...#...#.....#.....#.....#."),
    ('#', ".#.#..#.#.#####.#.#.#####.#.#..#.#."),
    ('*', ".......#..#.#.#.###.#.#.#..#......."),
];

/// The 7 row bitmasks of `ch` (upper case drawn as lower case; unknown as a box).
fn glyph(ch: char) -> [u8; 7] {
    let ch = ch.to_ascii_lowercase();
    if ch == ' ' {
        return [0; 7];
    }
    let Some((_, s)) = FONT.iter().find(|(c, _)| *c == ch) else {
        return [
            0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111,
        ];
    };
    let b = s.as_bytes();
    let mut rows = [0u8; 7];
    for (r, row) in rows.iter_mut().enumerate() {
        for c in 0..5 {
            if b.get(r * 5 + c) == Some(&b'#') {
                *row |= 1 << (4 - c);
            }
        }
    }
    rows
}

/// One named series of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart with axes, ticks, a title and a legend.
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
}

/// About `n` round tick values covering [lo, hi].
fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= n as f64)
        .unwrap_or(10.0 * mag);
    let mut v = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 {
        v.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    v
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 || (a - a.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl LinePlot {
    /// Draws the plot into the `w x h` region of `cv` at (x0, y0).
    pub fn draw(&self, cv: &mut Canvas, x0: i64, y0: i64, w: i64, h: i64) {
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|p| p.0.is_finite() && p.1.is_finite() && (!self.log_y || p.1 > 0.0))
            .collect();
        cv.text(
            x0 + (w - Canvas::text_width(&self.title, 2)) / 2,
            y0 + 6,
            &self.title,
            BLACK,
            2,
        );
        // The legend sits right of the plot area.
        let lw = self
            .series
            .iter()
            .map(|s| Canvas::text_width(&s.name, 2))
            .max()
            .unwrap_or(0)
            + 40;
        let (l, r, t, b) = (x0 + 70, x0 + w - lw - 24, y0 + 30, y0 + h - 40);
        cv.rect(l, t, r - l, b - t, [250, 250, 250]);
        if pts.is_empty() {
            cv.text(l + 10, t + 10, "no data", DARK, 2);
            return;
        }
        let fy = |v: f64| if self.log_y { v.log10() } else { v };
        let (mut xlo, mut xhi) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (mut ylo, mut yhi) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
            (a.min(fy(p.1)), b.max(fy(p.1)))
        });
        if xhi <= xlo {
            xhi = xlo + 1.0;
            xlo -= 1.0;
        }
        let pad = ((yhi - ylo) * 0.05).max(if self.log_y { 0.05 } else { 1e-6 });
        ylo -= pad;
        yhi += pad;
        let px = |x: f64| l + ((x - xlo) / (xhi - xlo) * (r - l) as f64).round() as i64;
        let py = |y: f64| b - ((fy(y) - ylo) / (yhi - ylo) * (b - t) as f64).round() as i64;
        // Grid and ticks.
        let yticks: Vec<f64> = if self.log_y {
            let (e0, e1) = (ylo.floor() as i32, yhi.ceil() as i32);
            let mut v = Vec::new();
            for e in e0..=e1 {
                for m in [1.0, 2.0, 5.0] {
                    let val = m * 10f64.powi(e);
                    if (ylo..=yhi).contains(&val.log10()) && (e1 - e0 <= 2 || m == 1.0) {
                        v.push(val);
                    }
                }
            }
            v
        } else {
            nice_ticks(ylo, yhi, 6)
        };
        for v in yticks {
            let y = py(v);
            cv.line((l, y), (r, y), GRAY, 1);
            let s = fmt_tick(v);
            cv.text(
                l - 6 - Canvas::text_width(&s, 1) * 2 / 2,
                y - 7,
                &s,
                DARK,
                2,
            );
        }
        for v in nice_ticks(xlo, xhi, 6) {
            let x = px(v);
            cv.line((x, t), (x, b), GRAY, 1);
            let s = fmt_tick(v);
            cv.text(x - Canvas::text_width(&s, 2) / 2, b + 6, &s, DARK, 2);
        }
        cv.line((l, t), (l, b), BLACK, 1);
        cv.line((l, b), (r, b), BLACK, 1);
        cv.text(
            r - Canvas::text_width(&self.x_label, 2),
            b + 24,
            &self.x_label,
            DARK,
            2,
        );
        // Lines.
        for (k, s) in self.series.iter().enumerate() {
            let c = PALETTE[k % PALETTE.len()];
            let mut prev: Option<(i64, i64)> = None;
            for &(x, y) in &s.points {
                if !(x.is_finite() && y.is_finite()) || (self.log_y && y <= 0.0) {
                    prev = None;
                    continue;
                }
                let p = (px(x), py(y));
                match prev {
                    Some(q) => cv.line(q, p, c, 2),
                    None => cv.rect(p.0 - 1, p.1 - 1, 3, 3, c),
                }
                prev = Some(p);
            }
        }
        let (lx, ly) = (r + 16, t + 8);
        for (k, s) in self.series.iter().enumerate() {
            let c = PALETTE[k % PALETTE.len()];
            let y = ly + k as i64 * 20;
            cv.line((lx, y + 7), (lx + 24, y + 7), c, 3);
            cv.text(lx + 32, y, &s.name, BLACK, 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_has_seven_rows_of_five() {
        for (c, s) in FONT {
            assert_eq!(s.len(), 35, "glyph {c:?}");
        }
        assert_eq!(glyph('1')[0], 0b00100);
        assert_eq!(glyph('A'), glyph('a'));
    }

    #[test]
    fn plot_draws_lines_inside_its_region() {
        let mut cv = Canvas::new(400, 300, WHITE);
        let plot = LinePlot {
            title: "loss".into(),
            x_label: "step".into(),
            log_y: true,
            series: vec![Series {
                name: "total".into(),
                points: (1..50).map(|i| (i as f64, 1.0 / i as f64)).collect(),
            }],
        };
        plot.draw(&mut cv, 0, 0, 400, 300);
        let blue = cv.data.chunks_exact(3).filter(|p| p == &PALETTE[0]).count();
        assert!(blue > 200, "{blue} line pixels");
        assert_eq!(
            nice_ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
    }
}
