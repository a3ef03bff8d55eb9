//! moto's S3-compatible server (`moto_server`, from PyPI) for the tests
//! that need a bucket, and boto3 (installed with it) to look inside.

use super::readme::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `moto_server`, killed on drop.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Moto {
    /// Starts it on a free port and waits until it listens.
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is not installed (pip install 'moto[server]'; .ci/run does)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server never listened on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Runs a boto3 snippet with `s3`, a client of this server, defined.
    pub fn boto3(&self, code: &str) -> String {
        let script = format!(
            "import boto3\ns3 = boto3.client(\"s3\", endpoint_url=\"{}\", region_name=\"us-east-1\", aws_access_key_id=\"a\", aws_secret_access_key=\"b\")\n{code}\n",
            self.url
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3 with boto3 (installed with moto)");
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
