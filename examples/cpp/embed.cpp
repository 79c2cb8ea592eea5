// Embeds one image with the C++ wrapper and prints the backend, grid, first CLS values, the
// best-matching patch of the centre and the object TokenCut finds.
//
//   embed_cpp MODEL_DIR IMAGE
#include <algorithm>
#include <cstdio>
#include <iostream>

#include <dinoedge.hpp>

int main(int argc, char **argv) {
    if (argc < 3) {
        std::cerr << "usage: " << argv[0] << " MODEL_DIR IMAGE\n";
        return 2;
    }
    try {
        dinoedge::Model model(argv[1]);
        dinoedge::Session session(model);
        dinoedge::Image image(argv[2]);
        dinoedge::Features f = session.embed(image);
        auto shape = f.shape();
        auto cls = f.copy(DINOEDGE_TOKENS_CLS);
        std::printf("backend: %s\n", session.backend().c_str());
        std::printf("grid: %u x %u, dim %u, registers %u\n", shape.grid_height, shape.grid_width, shape.dim, shape.num_registers);
        std::printf("cls:");
        for (size_t i = 0; i < 8 && i < cls.size(); i++) std::printf(" %.6f", cls[i]);
        std::printf("\n");
        auto sim = f.similarity(0.5f, 0.5f);
        std::printf("similarity to the centre patch: min %.3f max %.3f\n", *std::min_element(sim.begin(), sim.end()), *std::max_element(sim.begin(), sim.end()));
        auto d = f.discover();
        std::printf("object: %u patches, box (%u, %u)-(%u, %u) of %u x %u\n", d.patches, d.box_x0, d.box_y0, d.box_x1, d.box_y1, image.width(), image.height());
        dinoedge::Pca pca(f);
        auto rgb = pca.render(f, 64, 48);
        std::printf("pca picture: %zu bytes\n", rgb.size());
    } catch (const dinoedge::Error &e) {
        std::cerr << e.what() << "\n";
        return 1;
    }
    return 0;
}
