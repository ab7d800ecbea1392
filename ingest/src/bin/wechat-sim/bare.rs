//! The baseline: the same HTTP stack as ingest, doing nothing but answering `success`.

use actix_web::{web, App, HttpResponse, HttpServer};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Worker threads; 0 means one per core (as ingest).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let mut server = HttpServer::new(|| {
            App::new().route(
                "/wechat/{app}",
                web::post().to(|_body: web::Bytes| async { HttpResponse::Ok().body("success") }),
            )
        });
        if args.workers > 0 {
            server = server.workers(args.workers);
        }
        eprintln!("bare handler on http://{}/wechat/{{app}}", args.listen);
        server.bind(&args.listen)?.run().await?;
        Ok(())
    })
}
