// sqlx::migrate! embeds each migration it finds with include_str!, which makes cargo watch
// those files but not the directory: without this, a new migration would be left out of an
// incremental build (sqlx's own advice, `sqlx migrate build-script`).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
