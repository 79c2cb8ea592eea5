// tiny_http 0.12, a thread per request as dinoedge used it.
fn main() {
    let server = std::sync::Arc::new(tiny_http::Server::http(http_stacks::addr()).unwrap());
    let (stats, frame) = (http_stacks::stats(), http_stacks::frame());
    loop {
        let req = server.recv().unwrap();
        let (stats, frame) = (stats.clone(), frame.clone());
        std::thread::spawn(move || {
            let _ = match req.url() {
                "/stats" => req.respond(tiny_http::Response::from_string(stats)),
                _ => req.respond(tiny_http::Response::from_data(frame)),
            };
        });
    }
}
