// axum 0.8 on hyper 1's HTTP/1 connections, one current-thread tokio runtime, header timeout:
// the shape of dinoedge's live server.
use axum::{Router, routing::get};
use hyper_util::rt::{TokioIo, TokioTimer};
fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (stats, frame) = (http_stacks::stats(), http_stacks::frame());
        let app = Router::new()
            .route("/stats", get(move || async move { stats }))
            .route("/frame.jpg", get(move || async move { frame }));
        let l = tokio::net::TcpListener::bind(http_stacks::addr()).await.unwrap();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(5))
            .max_buf_size(16384);
        loop {
            let (s, _) = l.accept().await.unwrap();
            let svc = hyper_util::service::TowerToHyperService::new(app.clone());
            let conn = http.serve_connection(TokioIo::new(s), svc);
            tokio::spawn(conn);
        }
    });
}
