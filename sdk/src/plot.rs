//! The pictures the SDK draws, through `plotters`: line charts with real axes, ticks and
//! legends, written as PNG and SVG (the `plots` feature, with DejaVu Sans embedded so no
//! system font is needed), and marks drawn onto frames (boxes, tracked points).

use dinoedge_runtime::RgbImage;
use plotters::backend::BitMapBackend;
use plotters::prelude::*;

#[cfg(feature = "plots")]
pub use charts::{Chart, Series, write_charts};

/// Runs `draw` over `img`'s pixels as a plotters drawing area.
fn on_image(
    img: &mut RgbImage,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>),
) {
    let size = (img.width as u32, img.height as u32);
    let root = BitMapBackend::with_buffer(&mut img.data, size).into_drawing_area();
    draw(&root);
    // Drawing into a memory buffer cannot fail; presenting it only releases the borrow.
    let _ = root.present();
}

/// Draws the outline of `[x0, y0, x1, y1)` (pixels) onto `img`, `thick` pixels wide.
pub fn draw_box(img: &mut RgbImage, [x0, y0, x1, y1]: [usize; 4], color: [u8; 3], thick: u32) {
    let (x0, y0, x1, y1) = (x0 as i32, y0 as i32, x1 as i32 - 1, y1 as i32 - 1);
    let style = RGBColor(color[0], color[1], color[2]).stroke_width(thick);
    on_image(img, |root| {
        let _ = root.draw(&PathElement::new(
            vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)],
            style,
        ));
    });
}

/// One tracked point drawn onto a frame.
#[derive(Clone, Copy, Debug)]
pub struct Marker {
    pub x: i32,
    pub y: i32,
    pub color: [u8; 3],
    /// Lost points are crossed out.
    pub lost: bool,
}

/// Draws tracked points as white-ringed squares (lost ones crossed out in red).
pub fn draw_markers(img: &mut RgbImage, markers: &[Marker]) {
    on_image(img, |root| {
        for m in markers {
            let (x, y) = (m.x, m.y);
            let c = RGBColor(m.color[0], m.color[1], m.color[2]);
            let _ = root.draw(&Rectangle::new(
                [(x - 4, y - 4), (x + 4, y + 4)],
                WHITE.filled(),
            ));
            let _ = root.draw(&Rectangle::new(
                [(x - 3, y - 3), (x + 3, y + 3)],
                c.filled(),
            ));
            if m.lost {
                let cross = vec![(x - 6, y - 6), (x + 6, y + 6)];
                let _ = root.draw(&PathElement::new(cross, RED.stroke_width(2)));
            }
        }
    });
}

#[cfg(feature = "plots")]
mod charts {
    use std::path::Path;

    use plotters::coord::Shift;
    use plotters::coord::ranged1d::ValueFormatter;
    use plotters::prelude::*;
    use plotters::style::{FontStyle, register_font};

    use crate::error::{Error, Result};

    /// One named line of a chart.
    #[derive(Clone, Debug)]
    pub struct Series {
        pub name: String,
        pub points: Vec<(f64, f64)>,
    }

    /// A line chart: title, axis labels and its series (each with a legend entry).
    #[derive(Clone, Debug)]
    pub struct Chart {
        pub title: String,
        pub x_label: String,
        pub y_label: String,
        /// A logarithmic y axis (non-positive values are left out).
        pub log_y: bool,
        pub series: Vec<Series>,
    }

    /// Registers the embedded DejaVu Sans as plotters' sans-serif face, once.
    fn fonts(path: &Path) -> Result<()> {
        static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let ok = *REGISTERED.get_or_init(|| {
            register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
        });
        ok.then_some(())
            .ok_or_else(|| chart_error(path, "the embedded font did not load"))
    }

    /// Draws `charts` stacked, `panel` pixels high each and `width` wide, into `png` and into
    /// `svg` (both drawn before either is written, each written atomically).
    pub fn write_charts(
        charts: &[Chart],
        width: u32,
        panel: u32,
        png: &Path,
        svg: &Path,
    ) -> Result<()> {
        fonts(png)?;
        let height = panel * charts.len().max(1) as u32;
        let mut img = dinoedge_runtime::RgbImage {
            width: width as usize,
            height: height as usize,
            data: vec![255; width as usize * height as usize * 3],
        };
        {
            let root =
                BitMapBackend::with_buffer(&mut img.data, (width, height)).into_drawing_area();
            draw_stacked(&root, charts).map_err(|e| chart_error(png, e))?;
            root.present().map_err(|e| chart_error(png, e))?;
        }
        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, (width, height)).into_drawing_area();
            draw_stacked(&root, charts).map_err(|e| chart_error(svg, e))?;
            root.present().map_err(|e| chart_error(svg, e))?;
        }
        crate::image_io::save_png(png, &img)?;
        dinoedge_runtime::fsutil::write_atomic(svg, text.as_bytes()).map_err(Error::from)
    }

    fn chart_error(path: &Path, e: impl std::fmt::Display) -> Error {
        Error::Image {
            path: path.to_path_buf(),
            reason: format!("drawing the chart failed: {e}"),
        }
    }

    type DrawResult<DB> =
        std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

    fn draw_stacked<DB: DrawingBackend>(
        root: &DrawingArea<DB, Shift>,
        charts: &[Chart],
    ) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let areas = root.split_evenly((charts.len().max(1), 1));
        for (chart, area) in charts.iter().zip(&areas) {
            draw_chart(area, chart)?;
        }
        Ok(())
    }

    /// The x range and the y range of the points that a chart shows.
    fn ranges(c: &Chart) -> Option<((f64, f64), (f64, f64))> {
        let pts = || {
            c.series
                .iter()
                .flat_map(|s| &s.points)
                .filter(|p| p.0.is_finite() && p.1.is_finite() && (!c.log_y || p.1 > 0.0))
        };
        let (mut x, mut y) = ((f64::MAX, f64::MIN), (f64::MAX, f64::MIN));
        for &(px, py) in pts() {
            x = (x.0.min(px), x.1.max(px));
            y = (y.0.min(py), y.1.max(py));
        }
        // No points, or bounds whose span overflows (plotters' tick search needs a finite
        // range): nothing to draw.
        if x.0 > x.1 || !(x.1 - x.0).is_finite() || !(y.1 - y.0).is_finite() {
            return None;
        }
        // Some air around the lines, and a range even for a flat one.
        let y = if c.log_y {
            (y.0 / 1.25, y.1 * 1.25)
        } else {
            let m = ((y.1 - y.0) * 0.05).max(1e-3);
            (y.0 - m, y.1 + m)
        };
        let x = if x.1 > x.0 { x } else { (x.0 - 1.0, x.1 + 1.0) };
        [x.0, x.1, y.0, y.1, y.1 - y.0]
            .iter()
            .all(|v| v.is_finite())
            .then_some((x, y))
    }

    fn draw_chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &Chart) -> DrawResult<DB> {
        let Some(((x0, x1), (y0, y1))) = ranges(c) else {
            area.titled(
                &format!("{} (nothing to draw)", c.title),
                ("sans-serif", 20),
            )?;
            return Ok(());
        };
        let mut b = ChartBuilder::on(area);
        b.caption(&c.title, ("sans-serif", 20))
            .margin(12)
            .margin_right(30)
            .x_label_area_size(40)
            .y_label_area_size(70);
        if c.log_y {
            let ch = b.build_cartesian_2d(x0..x1, (y0..y1).log_scale())?;
            draw_lines(ch, c, |y| y > 0.0)
        } else {
            draw_lines(b.build_cartesian_2d(x0..x1, y0..y1)?, c, |_| true)
        }
    }

    /// Axes with ticks and labels, one line per series (finite points that `keep` accepts),
    /// and the legend.
    fn draw_lines<'a, DB, X, Y>(
        mut ch: ChartContext<'a, DB, Cartesian2d<X, Y>>,
        c: &Chart,
        keep: fn(f64) -> bool,
    ) -> DrawResult<DB>
    where
        DB: DrawingBackend + 'a,
        X: Ranged<ValueType = f64> + ValueFormatter<f64>,
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        ch.configure_mesh()
            .x_label_formatter(&|x| format!("{x}"))
            .x_desc(&c.x_label)
            .y_desc(&c.y_label)
            .draw()?;
        for (i, s) in c.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts = s
                .points
                .iter()
                .copied()
                .filter(|p| p.1.is_finite() && keep(p.1));
            ch.draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                .label(&s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        ch.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(w: usize, h: usize) -> RgbImage {
        RgbImage {
            width: w,
            height: h,
            data: vec![100; w * h * 3],
        }
    }

    fn px(img: &RgbImage, x: usize, y: usize) -> [u8; 3] {
        let i = (y * img.width + x) * 3;
        [img.data[i], img.data[i + 1], img.data[i + 2]]
    }

    #[test]
    fn a_box_is_drawn_on_its_outline_only() {
        let mut img = gray(40, 30);
        draw_box(&mut img, [5, 6, 25, 20], [255, 220, 0], 1);
        assert_eq!(px(&img, 5, 6), [255, 220, 0]);
        assert_eq!(px(&img, 24, 19), [255, 220, 0]);
        assert_eq!(px(&img, 15, 6), [255, 220, 0]);
        assert_eq!(px(&img, 15, 13), [100; 3], "inside");
        assert_eq!(px(&img, 30, 25), [100; 3], "outside");
    }

    #[test]
    fn markers_are_ringed_and_lost_ones_crossed() {
        let mut img = gray(40, 30);
        let m = |x, lost| Marker {
            x,
            y: 15,
            color: [0, 0, 255],
            lost,
        };
        draw_markers(&mut img, &[m(10, false), m(30, true), m(-50, false)]);
        assert_eq!(px(&img, 10, 15), [0, 0, 255]);
        assert_eq!(px(&img, 10 - 4, 15), [255, 255, 255], "white ring");
        assert_eq!(
            px(&img, 30 - 6, 15 - 6),
            [255, 0, 0],
            "cross of a lost point"
        );
        assert_eq!(
            px(&img, 10 - 6, 15 - 6),
            [100; 3],
            "no cross on a live point"
        );
    }

    #[cfg(feature = "plots")]
    #[test]
    fn charts_have_axes_legends_and_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let (png, svg) = (dir.path().join("c.png"), dir.path().join("c.svg"));
        let line = |name: &str, f: fn(f64) -> f64| Series {
            name: name.into(),
            points: (1..50).map(|i| (i as f64, f(i as f64))).collect(),
        };
        let charts = [
            Chart {
                title: "training loss".into(),
                x_label: "step".into(),
                y_label: "loss".into(),
                log_y: true,
                series: vec![line("total", |x| 1.0 / x), line("zero", |_| 0.0)],
            },
            Chart {
                title: "empty".into(),
                x_label: "step".into(),
                y_label: "cosine".into(),
                log_y: false,
                series: vec![],
            },
        ];
        write_charts(&charts, 400, 300, &png, &svg).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (400, 600));
        let ink = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(ink > 2000, "{ink} drawn pixels");
        let text = std::fs::read_to_string(&svg).unwrap();
        for s in ["training loss", "step", "total", "empty (nothing to draw)"] {
            assert!(text.contains(s), "{s} missing from the SVG");
        }
    }

    #[cfg(feature = "plots")]
    #[test]
    fn values_at_the_edge_of_f64_give_an_empty_chart_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let (png, svg) = (dir.path().join("c.png"), dir.path().join("c.svg"));
        let chart = Chart {
            title: "cosine".into(),
            x_label: "step".into(),
            y_label: "cosine".into(),
            log_y: false,
            series: vec![Series {
                name: "edited".into(),
                points: vec![(1.0, -1e308), (2.0, 1e308), (3.0, f64::NAN)],
            }],
        };
        write_charts(&[chart], 300, 200, &png, &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("cosine (nothing to draw)"));
    }
}
