// actix-web 4 with one worker and its default limits.
use actix_web::{App, HttpServer, web};
#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let (stats, frame) = (http_stacks::stats(), http_stacks::frame());
    HttpServer::new(move || {
        let (s, f) = (stats.clone(), frame.clone());
        App::new()
            .route("/stats", web::get().to(move || { let s = s.clone(); async move { s } }))
            .route("/frame.jpg", web::get().to(move || { let f = f.clone(); async move { f } }))
    })
    .workers(1)
    .bind(http_stacks::addr())?
    .run()
    .await
}
