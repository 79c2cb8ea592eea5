/* Error paths of the C API: each bad call returns the documented status and a helpful
 * message, and nothing crashes or leaks.   errors MODEL_DIR */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <dinoedge.h>

static int failures = 0;

static void expect(const char *what, dinoedge_status got, dinoedge_status want, const char *needle) {
    const char *msg = dinoedge_last_error();
    int ok = got == want && (needle == NULL || strstr(msg, needle) != NULL);
    printf("%-34s %-30s %s\n", what, dinoedge_status_name(got), msg);
    if (!ok) {
        printf("  FAILED: expected %s with \"%s\"\n", dinoedge_status_name(want), needle ? needle : "");
        failures++;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
        return 2;
    }
    struct dinoedge_model *model = NULL;
    struct dinoedge_session *session = NULL;
    struct dinoedge_features *features = NULL;

    /* NULL handles and pointers. */
    expect("NULL model path", dinoedge_model_load(NULL, &model), DINOEDGE_ERR_INVALID_ARGUMENT, "dir is NULL");
    expect("NULL model handle", dinoedge_session_create(NULL, NULL, &session), DINOEDGE_ERR_INVALID_ARGUMENT, "model is NULL");
    struct dinoedge_features_shape shape;
    expect("NULL features", dinoedge_features_get_shape(NULL, &shape), DINOEDGE_ERR_INVALID_ARGUMENT, "features is NULL");
    expect("destroy NULL", dinoedge_model_destroy(NULL), DINOEDGE_OK, ""); /* NULL is a no-op */
    dinoedge_session_destroy(NULL);

    /* A model directory that does not exist. */
    expect("bad model path", dinoedge_model_load("/nonexistent/dinoedge-model", &model), DINOEDGE_ERR_IO, "/nonexistent/dinoedge-model");

    if (dinoedge_model_load(argv[1], &model) != DINOEDGE_OK) {
        printf("cannot load %s: %s\n", argv[1], dinoedge_last_error());
        return 1;
    }
    /* An unsupported backend, and an options struct from an unknown future. */
    struct dinoedge_session_options opts;
    if (dinoedge_session_default_options(&opts) != DINOEDGE_OK) return 1;
    opts.backend = DINOEDGE_BACKEND_CUDA;
    expect("unsupported backend (cuda)", dinoedge_session_create(model, &opts, &session), DINOEDGE_ERR_UNSUPPORTED, "cuda");
    opts.backend = 42;
    expect("invalid backend value", dinoedge_session_create(model, &opts, &session), DINOEDGE_ERR_INVALID_ARGUMENT, "backend 42");
    if (dinoedge_session_default_options(&opts) != DINOEDGE_OK) return 1;
    opts.struct_size = 4;
    expect("options struct_size too small", dinoedge_session_create(model, &opts, &session), DINOEDGE_ERR_INVALID_ARGUMENT, "struct_size");

    /* A wrong buffer size. */
    if (dinoedge_session_default_options(&opts) != DINOEDGE_OK) return 1;
    opts.backend = DINOEDGE_BACKEND_CPU;
    opts.size = 28;
    if (dinoedge_session_create(model, &opts, &session) != DINOEDGE_OK) {
        printf("session: %s\n", dinoedge_last_error());
        return 1;
    }
    unsigned char px[40 * 30 * 3];
    memset(px, 100, sizeof px);
    expect("stride smaller than a row", dinoedge_session_embed_pixels(session, px, 40, 30, 10, DINOEDGE_PIXEL_RGB8, &features), DINOEDGE_ERR_INVALID_ARGUMENT, "stride");
    expect("image smaller than a patch", dinoedge_session_embed_pixels(session, px, 4, 4, 12, DINOEDGE_PIXEL_RGB8, &features), DINOEDGE_ERR_INVALID_ARGUMENT, "smaller than one");
    if (dinoedge_session_embed_pixels(session, px, 40, 30, 40 * 3, DINOEDGE_PIXEL_RGB8, &features) != DINOEDGE_OK) {
        printf("embed: %s\n", dinoedge_last_error());
        return 1;
    }
    float small[3];
    size_t needed = 0;
    expect("buffer too small", dinoedge_features_copy(features, DINOEDGE_TOKENS_PATCHES, small, 3, &needed), DINOEDGE_ERR_BUFFER_TOO_SMALL, "needed");
    printf("  needed %zu floats\n", needed);
    expect("embed into NULL features", dinoedge_session_embed_pixels_into(session, px, 40, 30, 40 * 3, DINOEDGE_PIXEL_RGB8, NULL), DINOEDGE_ERR_INVALID_ARGUMENT, "features is NULL");
    expect("embed into a session handle", dinoedge_session_embed_pixels_into(session, px, 40, 30, 40 * 3, DINOEDGE_PIXEL_RGB8, (struct dinoedge_features *)session), DINOEDGE_ERR_INVALID_ARGUMENT, "features");
    expect("embed into, bad stride", dinoedge_session_embed_pixels_into(session, px, 40, 30, 10, DINOEDGE_PIXEL_RGB8, features), DINOEDGE_ERR_INVALID_ARGUMENT, "stride");
    if (dinoedge_session_embed_pixels_into(session, px, 40, 30, 40 * 3, DINOEDGE_PIXEL_RGB8, features) != DINOEDGE_OK) {
        fprintf(stderr, "embed into failed: %s\n", dinoedge_last_error());
        return 1;
    }
    expect("invalid token kind", dinoedge_features_copy(features, 9, small, 3, NULL), DINOEDGE_ERR_INVALID_ARGUMENT, "tokens 9");
    unsigned char mask[40 * 30];
    memset(mask, 0, sizeof mask);
    struct dinoedge_tracker *tracker = NULL;
    expect("tracker mask without objects", dinoedge_tracker_create(features, mask, 40, 30, 40, NULL, &tracker), DINOEDGE_ERR_INVALID_ARGUMENT, "no objects");
    expect("tracker mask of another size", dinoedge_tracker_create(features, mask, 20, 30, 20, NULL, &tracker), DINOEDGE_ERR_INVALID_ARGUMENT, "20x30");
    struct dinoedge_frames *frames = NULL;
    expect("frames from a missing folder", dinoedge_frames_open("/nonexistent/frames", &frames), DINOEDGE_ERR_IO, "/nonexistent/frames");
#ifndef DINOEDGE_HAS_CAMERA
    expect("camera in a build without it", dinoedge_frames_open_camera(0, 640, 480, 30, &frames), DINOEDGE_ERR_UNSUPPORTED, "camera");
#endif

    /* Handles of the wrong type, and destroyed handles: refused, never dereferenced. */
    expect("a model where features go", dinoedge_features_get_shape((const struct dinoedge_features *)model, &shape), DINOEDGE_ERR_INVALID_ARGUMENT, "is a dinoedge_model, not a dinoedge_features");
    expect("features destroyed as a session", dinoedge_session_destroy((struct dinoedge_session *)features), DINOEDGE_ERR_INVALID_ARGUMENT, "dinoedge_features");
    struct dinoedge_features *gone = NULL;
    if (dinoedge_session_embed_pixels(session, px, 40, 30, 40 * 3, DINOEDGE_PIXEL_RGB8, &gone) != DINOEDGE_OK) return 1;
    expect("destroy", dinoedge_features_destroy(gone), DINOEDGE_OK, "");
    expect("double destroy", dinoedge_features_destroy(gone), DINOEDGE_ERR_INVALID_ARGUMENT, "not a live dinoedge_features");
    expect("use after destroy", dinoedge_features_get_shape(gone, &shape), DINOEDGE_ERR_INVALID_ARGUMENT, "not a live");

    /* A tensor shape whose product wraps around: refused, nothing is read. */
    float one = 0.0f;
    expect("tensor dims that wrap", dinoedge_session_embed_tensor(session, &one, 203, 3, 36760123, 823996703, &gone), DINOEDGE_ERR_INVALID_ARGUMENT, "more values than memory");
    /* Limits: a session with a small pixel limit refuses larger images with LIMIT. */
    struct dinoedge_session *limited = NULL;
    if (dinoedge_session_default_options(&opts) != DINOEDGE_OK) return 1;
    opts.backend = DINOEDGE_BACKEND_CPU;
    opts.max_pixels = 100;
    if (dinoedge_session_create(model, &opts, &limited) != DINOEDGE_OK) return 1;
    expect("image over max_pixels", dinoedge_session_embed_pixels(limited, px, 40, 30, 40 * 3, DINOEDGE_PIXEL_RGB8, &gone), DINOEDGE_ERR_LIMIT, "--max-pixels");
    dinoedge_session_destroy(limited);
    /* An ABI-1 options struct (without max_pixels / max_tokens) is still accepted. */
    if (dinoedge_session_default_options(&opts) != DINOEDGE_OK) return 1;
    opts.backend = DINOEDGE_BACKEND_CPU;
    opts.struct_size = offsetof(struct dinoedge_session_options, max_pixels);
    expect("ABI 1 options struct", dinoedge_session_create(model, &opts, &limited), DINOEDGE_OK, "");
    dinoedge_session_destroy(limited);

    dinoedge_features_destroy(features);
    dinoedge_session_destroy(session);
    dinoedge_model_destroy(model);
    printf(failures ? "%d error-path checks FAILED\n" : "all error-path checks passed\n", failures);
    return failures ? 1 : 0;
}
