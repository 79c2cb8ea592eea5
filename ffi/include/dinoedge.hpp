// dinoedge.hpp: a header-only C++17 RAII wrapper over the dinoedge C API (dinoedge.h).
//
// Errors are exceptions: every failing C call throws dinoedge::Error, which carries the
// status and the library's message. Handles are move-only objects that destroy their C
// handle in the destructor. Threading follows the C API: a Model may be shared between
// threads; every other object is used by one thread at a time.
//
//   dinoedge::Model model("model_dir");
//   dinoedge::Session session(model);               // AUTO backend, 224 x 224
//   dinoedge::Features f = session.embed(dinoedge::Image("photo.jpg"));
//   std::vector<float> cls = f.copy(DINOEDGE_TOKENS_CLS);
#ifndef DINOEDGE_HPP
#define DINOEDGE_HPP

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dinoedge.h"

namespace dinoedge {

/// A failed dinoedge call: the status and the library's message.
class Error : public std::runtime_error {
  public:
    Error(dinoedge_status status, const std::string &what)
        : std::runtime_error(what + ": " + dinoedge_status_name(status) + ": " + dinoedge_last_error()), status_(status) {}
    dinoedge_status status() const noexcept { return status_; }

  private:
    dinoedge_status status_;
};

namespace detail {
inline dinoedge_status check(dinoedge_status s, const char *what) {
    if (s < 0) throw Error(s, what);
    return s;
}

/// A move-only owner of a C handle with its destroy function.
template <typename T, dinoedge_status (*Destroy)(T *)>
class Handle {
  public:
    Handle() = default;
    explicit Handle(T *p) : p_(p) {}
    Handle(const Handle &) = delete;
    Handle &operator=(const Handle &) = delete;
    Handle(Handle &&o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
    Handle &operator=(Handle &&o) noexcept {
        if (this != &o) {
            Destroy(p_);
            p_ = std::exchange(o.p_, nullptr);
        }
        return *this;
    }
    ~Handle() { Destroy(p_); }
    T *get() const noexcept { return p_; }
    T **out() noexcept { return &p_; }

  private:
    T *p_ = nullptr;
};
}  // namespace detail

inline std::string version() { return dinoedge_version(); }

class Image {
  public:
    explicit Image(const std::string &path) { detail::check(dinoedge_image_load(path.c_str(), h_.out()), "dinoedge_image_load"); }
    explicit Image(dinoedge_image *owned) : h_(owned) {}
    uint32_t width() const { return size().first; }
    uint32_t height() const { return size().second; }
    /// RGB8, rows of width * 3 bytes; valid while this Image lives.
    const uint8_t *pixels() const { return dinoedge_image_pixels(h_.get()); }
    const dinoedge_image *get() const { return h_.get(); }

  private:
    std::pair<uint32_t, uint32_t> size() const {
        uint32_t w = 0, h = 0;
        detail::check(dinoedge_image_size(h_.get(), &w, &h), "dinoedge_image_size");
        return {w, h};
    }
    detail::Handle<dinoedge_image, dinoedge_image_destroy> h_;
};

class Model {
  public:
    explicit Model(const std::string &dir) { detail::check(dinoedge_model_load(dir.c_str(), h_.out()), "dinoedge_model_load"); }
    dinoedge_model_info info() const {
        dinoedge_model_info i{};
        i.struct_size = sizeof i;
        detail::check(dinoedge_model_get_info(h_.get(), &i), "dinoedge_model_get_info");
        return i;
    }
    std::string describe() const { return dinoedge_model_describe(h_.get()); }
    const dinoedge_model *get() const { return h_.get(); }

  private:
    detail::Handle<dinoedge_model, dinoedge_model_destroy> h_;
};

class Features {
  public:
    explicit Features(dinoedge_features *owned) : h_(owned) {}
    dinoedge_features_shape shape() const {
        dinoedge_features_shape s{};
        detail::check(dinoedge_features_get_shape(h_.get(), &s), "dinoedge_features_get_shape");
        return s;
    }
    /// CLS (batch, dim), registers (batch, R, dim) or patches (batch, h, w, dim).
    std::vector<float> copy(int32_t tokens) const {
        size_t n = 0;
        detail::check(dinoedge_features_copy(h_.get(), tokens, nullptr, 0, &n), "dinoedge_features_copy");
        std::vector<float> v(n);
        detail::check(dinoedge_features_copy(h_.get(), tokens, v.data(), v.size(), nullptr), "dinoedge_features_copy");
        return v;
    }
    /// Cosine similarity of every patch to the patch under (x, y) in [0, 1]^2.
    std::vector<float> similarity(float x, float y) const {
        size_t n = 0;
        detail::check(dinoedge_similarity_map(h_.get(), x, y, nullptr, 0, &n), "dinoedge_similarity_map");
        std::vector<float> v(n);
        detail::check(dinoedge_similarity_map(h_.get(), x, y, v.data(), v.size(), nullptr), "dinoedge_similarity_map");
        return v;
    }
    dinoedge_discovery discover(float tau = 0.2f) const {
        dinoedge_discovery d{};
        detail::check(dinoedge_discover(h_.get(), tau, &d, nullptr, 0), "dinoedge_discover");
        return d;
    }
    const dinoedge_features *get() const { return h_.get(); }
    dinoedge_features *get_mut() { return h_.get(); }

  private:
    detail::Handle<dinoedge_features, dinoedge_features_destroy> h_;
};

class Session {
  public:
    explicit Session(const Model &model) : Session(model, default_options()) {}
    Session(const Model &model, const dinoedge_session_options &opts) {
        detail::check(dinoedge_session_create(model.get(), &opts, h_.out()), "dinoedge_session_create");
    }
    static dinoedge_session_options default_options() {
        dinoedge_session_options o{};
        detail::check(dinoedge_session_default_options(&o), "dinoedge_session_default_options");
        return o;
    }
    std::string backend() const { return dinoedge_session_backend(h_.get()); }
    Features embed(const Image &img) {
        dinoedge_features *f = nullptr;
        detail::check(dinoedge_session_embed_image(h_.get(), img.get(), &f), "dinoedge_session_embed_image");
        return Features(f);
    }
    /// An 8-bit frame with a row stride (e.g. a cv::Mat: data, cols, rows, step, BGR8).
    Features embed(const uint8_t *pixels, uint32_t width, uint32_t height, size_t stride, int32_t format) {
        dinoedge_features *f = nullptr;
        detail::check(dinoedge_session_embed_pixels(h_.get(), pixels, width, height, stride, format, &f), "dinoedge_session_embed_pixels");
        return Features(f);
    }
    /// Video: the next frame's features into `f`, reusing its buffers.
    void embed_into(const Image &img, Features &f) {
        detail::check(dinoedge_session_embed_image_into(h_.get(), img.get(), f.get_mut()), "dinoedge_session_embed_image_into");
    }
    void embed_into(const uint8_t *pixels, uint32_t width, uint32_t height, size_t stride, int32_t format, Features &f) {
        detail::check(dinoedge_session_embed_pixels_into(h_.get(), pixels, width, height, stride, format, f.get_mut()), "dinoedge_session_embed_pixels_into");
    }

  private:
    detail::Handle<dinoedge_session, dinoedge_session_destroy> h_;
};

class Pca {
  public:
    explicit Pca(const Features &reference) { detail::check(dinoedge_pca_create(reference.get(), h_.out()), "dinoedge_pca_create"); }
    /// RGB8 picture of width x height.
    std::vector<uint8_t> render(const Features &f, uint32_t width, uint32_t height) const {
        std::vector<uint8_t> rgb(size_t(width) * height * 3);
        detail::check(dinoedge_pca_render(h_.get(), f.get(), width, height, rgb.data(), rgb.size()), "dinoedge_pca_render");
        return rgb;
    }

  private:
    detail::Handle<dinoedge_pca, dinoedge_pca_destroy> h_;
};

class Tracker {
  public:
    /// `mask`: one object id per pixel of the first frame (width x height, tightly packed).
    Tracker(const Features &first, const std::vector<uint8_t> &mask, uint32_t width, uint32_t height) {
        detail::check(dinoedge_tracker_create(first.get(), mask.data(), width, height, width, nullptr, h_.out()), "dinoedge_tracker_create");
    }
    void step(const Features &frame) { detail::check(dinoedge_tracker_step(h_.get(), frame.get()), "dinoedge_tracker_step"); }
    std::vector<uint8_t> mask(uint32_t width, uint32_t height) const {
        std::vector<uint8_t> m(size_t(width) * height);
        detail::check(dinoedge_tracker_mask(h_.get(), width, height, m.data(), m.size()), "dinoedge_tracker_mask");
        return m;
    }

  private:
    detail::Handle<dinoedge_tracker, dinoedge_tracker_destroy> h_;
};

/// Frames of a folder, a video file or a camera.
class Frames {
  public:
    explicit Frames(const std::string &path) { detail::check(dinoedge_frames_open(path.c_str(), h_.out()), "dinoedge_frames_open"); }
    /// A GStreamer pipeline (library built with the `gstreamer` feature).
    static Frames gst(const std::string &pipeline, uint32_t timeout_ms = 0) {
        Frames f;
        detail::check(dinoedge_frames_open_gst(pipeline.c_str(), timeout_ms, f.h_.out()), "dinoedge_frames_open_gst");
        return f;
    }
    /// Appends the next frame to `into`; false at the end of the stream.
    bool next(std::vector<Image> &into) {
        dinoedge_image *img = nullptr;
        if (detail::check(dinoedge_frames_next(h_.get(), &img, nullptr), "dinoedge_frames_next") == DINOEDGE_END_OF_STREAM) return false;
        into.emplace_back(img);
        return true;
    }

  private:
    Frames() = default;
    detail::Handle<dinoedge_frames, dinoedge_frames_destroy> h_;
};

}  // namespace dinoedge

#endif  // DINOEDGE_HPP
