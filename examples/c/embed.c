/* Embeds one image and prints the backend, the patch grid and the first CLS values.
 *
 *   embed MODEL_DIR IMAGE [BACKEND]     BACKEND: auto (default), cpu, cpu-ref, wgpu, cuda
 *
 * Build against an installed dinoedge:  cc embed.c $(pkg-config --cflags --libs dinoedge)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dinoedge.h>

static int fail(const char *what, dinoedge_status s) {
    fprintf(stderr, "%s failed: %s: %s\n", what, dinoedge_status_name(s), dinoedge_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR IMAGE [auto|cpu|cpu-ref|wgpu|cuda]\n", argv[0]);
        return 2;
    }
    if (dinoedge_abi_version() != DINOEDGE_ABI_VERSION) {
        fprintf(stderr, "header ABI %d, library ABI %u\n", DINOEDGE_ABI_VERSION, dinoedge_abi_version());
        return 1;
    }
    struct dinoedge_session_options opts;
    dinoedge_status s = dinoedge_session_default_options(&opts);
    if (s != DINOEDGE_OK) return fail("default options", s);
    if (argc > 3) {
        const char *names[] = {"auto", "cpu", "cpu-ref", "wgpu", "cuda"};
        int found = 0;
        for (int i = 0; i < 5; i++) {
            if (strcmp(argv[3], names[i]) == 0) {
                opts.backend = i;
                found = 1;
            }
        }
        if (!found) {
            fprintf(stderr, "unknown backend %s\n", argv[3]);
            return 2;
        }
    }

    struct dinoedge_model *model = NULL;
    struct dinoedge_session *session = NULL;
    struct dinoedge_image *image = NULL;
    struct dinoedge_features *features = NULL;
    float *cls = NULL;
    int rc = 1;

    if ((s = dinoedge_model_load(argv[1], &model)) != DINOEDGE_OK) { fail("load model", s); goto done; }
    if ((s = dinoedge_session_create(model, &opts, &session)) != DINOEDGE_OK) { fail("create session", s); goto done; }
    if ((s = dinoedge_image_load(argv[2], &image)) != DINOEDGE_OK) { fail("load image", s); goto done; }
    if ((s = dinoedge_session_embed_image(session, image, &features)) != DINOEDGE_OK) { fail("embed", s); goto done; }

    struct dinoedge_features_shape shape;
    if ((s = dinoedge_features_get_shape(features, &shape)) != DINOEDGE_OK) { fail("shape", s); goto done; }
    size_t n = 0;
    if ((s = dinoedge_features_copy(features, DINOEDGE_TOKENS_CLS, NULL, 0, &n)) != DINOEDGE_OK) { fail("size query", s); goto done; }
    cls = malloc(n * sizeof(float));
    if (!cls) goto done;
    if ((s = dinoedge_features_copy(features, DINOEDGE_TOKENS_CLS, cls, n, NULL)) != DINOEDGE_OK) { fail("copy CLS", s); goto done; }

    printf("backend: %s\n", dinoedge_session_backend(session));
    printf("grid: %u x %u, dim %u, registers %u\n", shape.grid_height, shape.grid_width, shape.dim, shape.num_registers);
    printf("cls:");
    for (size_t i = 0; i < 8 && i < n; i++) printf(" %.6f", cls[i]);
    printf("\n");
    rc = 0;

done:
    free(cls);
    dinoedge_features_destroy(features);
    dinoedge_image_destroy(image);
    dinoedge_session_destroy(session);
    dinoedge_model_destroy(model);
    return rc;
}
