//! Embed one image with the dinoedge SDK and print what came out.
//!
//! ```text
//! cargo run --release -p dinoedge-examples --example embed -- MODEL_DIR IMAGE [PCA.png]
//! ```

use dinoedge::dense::resize_rgb;
use dinoedge::pca::PcaBasis;
use dinoedge::{Embedder, EmbedderOptions, InputMode, image_io};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, image, rest @ ..] = args.as_slice() else {
        eprintln!("usage: embed MODEL_DIR IMAGE [PCA.png]");
        std::process::exit(2);
    };
    // Dense mode: keep the image's aspect ratio, short side 448 pixels.
    let opts = EmbedderOptions {
        mode: InputMode::Dense(448),
        ..Default::default()
    };
    let mut embedder = Embedder::load(model, &opts)?;
    let img = image_io::load_rgb(image.as_ref())?;
    let f = embedder.embed(&img)?;
    let (h, w) = f.grid;
    println!(
        "{} on {}",
        embedder.model().config().describe(),
        embedder.backend().device
    );
    println!(
        "patch grid {h}x{w}, {} dims, {} register tokens",
        f.dim(),
        f.last.registers.shape[1]
    );
    println!("cls[:8] = {:?}", &f.last.cls.data[..8.min(f.dim())]);
    if let Some(out) = rest.first() {
        let basis = PcaBasis::fit(&f.last.patches.data, f.dim())?;
        let pic = resize_rgb(
            &basis.render(&f.last.patches.data, f.grid),
            img.width,
            img.height,
        );
        image_io::save_png(out.as_ref(), &pic)?;
        println!("wrote {out}");
    }
    Ok(())
}
