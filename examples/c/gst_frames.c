/* Dense features of every frame of a GStreamer pipeline: a Jetson CSI camera, an RTSP camera,
 * a hardware-decoded file. Needs a library built with the `gstreamer` feature
 * (scripts/install-ffi.sh PREFIX --features gstreamer).
 *
 *   gst_frames MODEL_DIR PIPELINE [MAX_FRAMES]
 *   gst_frames model "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1" 100
 *   gst_frames model "rtspsrc location=rtsp://cam/stream latency=200 ! application/x-rtp,media=video ! decodebin" 100
 *   gst_frames model "filesrc location=clip.mp4 ! decodebin"
 *
 * Prints each frame's time stamp, size and patch grid. A live source keeps only its newest
 * frame, so a slow model skips frames (the time stamps show it) instead of falling behind.
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
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR PIPELINE [MAX_FRAMES]\n", argv[0]);
        return 2;
    }
    long max_frames = argc > 3 ? strtol(argv[3], NULL, 10) : -1;
    int rc = 1;
    struct dinoedge_model *model = NULL;
    struct dinoedge_session *session = NULL;
    struct dinoedge_frames *frames = NULL;
    struct dinoedge_image *image = NULL;
    struct dinoedge_features *features = NULL;

    CHECK(dinoedge_model_load(argv[1], &model));
    struct dinoedge_session_options opts;
    CHECK(dinoedge_session_default_options(&opts));
    opts.input_mode = DINOEDGE_INPUT_DENSE; /* keep the aspect ratio */
    opts.size = 224;
    CHECK(dinoedge_session_create(model, &opts, &session));
    /* 0: the default timeout (20 s) for the pipeline to start and for each frame. */
    CHECK(dinoedge_frames_open_gst(argv[2], 0, &frames));

    long n = 0;
    for (; max_frames < 0 || n < max_frames; n++) {
        uint64_t t_us = 0;
        dinoedge_status s = dinoedge_frames_next(frames, &image, &t_us);
        if (s == DINOEDGE_END_OF_STREAM) break;
        CHECK(s);
        uint32_t w = 0, h = 0;
        CHECK(dinoedge_image_size(image, &w, &h));
        /* One features object for the whole stream: its buffers are reused. */
        if (!features) CHECK(dinoedge_session_embed_image(session, image, &features));
        else CHECK(dinoedge_session_embed_image_into(session, image, features));
        struct dinoedge_features_shape shape;
        CHECK(dinoedge_features_get_shape(features, &shape));
        printf("frame %ld at %.3f s: %ux%u -> grid %ux%u, dim %u\n", n, t_us / 1e6, w, h,
               shape.grid_height, shape.grid_width, shape.dim);
        dinoedge_image_destroy(image);
        image = NULL;
    }
    printf("%ld frames\n", n);
    rc = n > 0 ? 0 : 1;
done:
    dinoedge_features_destroy(features);
    dinoedge_image_destroy(image);
    dinoedge_frames_destroy(frames);
    dinoedge_session_destroy(session);
    dinoedge_model_destroy(model);
    return rc;
}
