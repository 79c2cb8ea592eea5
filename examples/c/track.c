/* Follows first-frame object masks through a frame folder (label propagation) and writes
 * one DAVIS mask per frame; also writes the PCA picture of the first frame and prints the
 * object TokenCut finds in it.
 *
 *   track MODEL_DIR FRAMES_DIR FIRST_MASK.png OUT_DIR
 */
#include <stdio.h>
#include <stdlib.h>

#include <dinoedge.h>

#define CHECK(call)                                                                        \
    do {                                                                                   \
        dinoedge_status s_ = (call);                                                       \
        if (s_ < 0) {                                                                      \
            fprintf(stderr, "%s: %s: %s\n", #call, dinoedge_status_name(s_), dinoedge_last_error()); \
            goto done;                                                                     \
        }                                                                                  \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL_DIR FRAMES_DIR FIRST_MASK.png OUT_DIR\n", argv[0]);
        return 2;
    }
    int rc = 1;
    struct dinoedge_model *model = NULL;
    struct dinoedge_session *session = NULL;
    struct dinoedge_frames *frames = NULL;
    struct dinoedge_image *image = NULL;
    struct dinoedge_features *features = NULL;
    struct dinoedge_tracker *tracker = NULL;
    struct dinoedge_pca *pca = NULL;
    unsigned char *mask = NULL, *rgb = NULL;
    uint32_t w = 0, h = 0, fw = 0, fh = 0;

    CHECK(dinoedge_model_load(argv[1], &model));
    struct dinoedge_session_options opts;
    CHECK(dinoedge_session_default_options(&opts));
    opts.input_mode = DINOEDGE_INPUT_DENSE; /* keep the aspect ratio */
    opts.size = 224;
    CHECK(dinoedge_session_create(model, &opts, &session));
    CHECK(dinoedge_mask_read(argv[3], NULL, 0, &w, &h));
    mask = malloc((size_t)w * h);
    if (!mask) goto done;
    CHECK(dinoedge_mask_read(argv[3], mask, (size_t)w * h, &w, &h));
    CHECK(dinoedge_frames_open(argv[2], &frames));

    char path[4096];
    for (int n = 0;; n++) {
        uint64_t t_us = 0;
        dinoedge_status s = dinoedge_frames_next(frames, &image, &t_us);
        if (s == DINOEDGE_END_OF_STREAM) break;
        CHECK(s);
        CHECK(dinoedge_image_size(image, &fw, &fh));
        /* The first frame makes the features object; later frames reuse its buffers. */
        if (!features) CHECK(dinoedge_session_embed_image(session, image, &features));
        else CHECK(dinoedge_session_embed_image_into(session, image, features));
        if (n == 0) {
            CHECK(dinoedge_tracker_create(features, mask, w, h, w, NULL, &tracker));
            /* The PCA view of the first frame, and the object TokenCut finds in it. */
            CHECK(dinoedge_pca_create(features, &pca));
            rgb = malloc((size_t)fw * fh * 3);
            if (!rgb) goto done;
            CHECK(dinoedge_pca_render(pca, features, fw, fh, rgb, (size_t)fw * fh * 3));
            snprintf(path, sizeof path, "%s/pca-00000.ppm", argv[4]);
            FILE *f = fopen(path, "wb");
            if (f) {
                fprintf(f, "P6\n%u %u\n255\n", fw, fh);
                fwrite(rgb, 1, (size_t)fw * fh * 3, f);
                fclose(f);
            }
            struct dinoedge_discovery d;
            CHECK(dinoedge_discover(features, 0.2f, &d, NULL, 0));
            printf("discovered object: %u patches, box (%u, %u)-(%u, %u)\n", d.patches, d.box_x0, d.box_y0, d.box_x1, d.box_y1);
        } else {
            CHECK(dinoedge_tracker_step(tracker, features));
        }
        CHECK(dinoedge_tracker_mask(tracker, w, h, mask, (size_t)w * h));
        snprintf(path, sizeof path, "%s/%05d.png", argv[4], n);
        CHECK(dinoedge_mask_write(path, mask, w, h));
        long objects = 0;
        for (size_t i = 0; i < (size_t)w * h; i++) objects += mask[i] != 0;
        printf("frame %d (t = %.3f s): %ld object pixels\n", n, t_us / 1e6, objects);
        dinoedge_image_destroy(image);
        image = NULL;
    }
    rc = 0;
done:
    free(mask);
    free(rgb);
    dinoedge_pca_destroy(pca);
    dinoedge_tracker_destroy(tracker);
    dinoedge_features_destroy(features);
    dinoedge_image_destroy(image);
    dinoedge_frames_destroy(frames);
    dinoedge_session_destroy(session);
    dinoedge_model_destroy(model);
    return rc;
}
