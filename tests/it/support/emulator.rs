//! The AWS API emulator (moto in server mode), one per test, on a free port.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_codebuild::types::{
    ComputeType, EnvironmentType, ProjectArtifacts, ProjectEnvironment, ProjectSource, SourceType,
};

pub struct Emulator {
    child: Child,
    pub url: String,
    pub config: aws_config::SdkConfig,
}

pub fn moto_server() -> String {
    if let Ok(path) = std::env::var("SLIPWAY_MOTO_SERVER") {
        return path;
    }
    let path = format!("{}/.venv/bin/moto_server", env!("CARGO_MANIFEST_DIR"));
    assert!(
        std::path::Path::new(&path).exists(),
        "the AWS emulator is not installed at {path}: run scripts/test.sh (or scripts/setup-emulator.sh)"
    );
    path
}

impl Emulator {
    /// Starts moto on a port it picks itself (`-p 0`) and reads that port from its "Running on"
    /// line: no other test's server can take the port between picking and binding it.
    pub async fn start() -> Emulator {
        let mut child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto_server");
        let stderr = child.stderr.take().expect("piped stderr");
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        // moto logs every request to stderr: the pipe is drained for as long as it runs.
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line
                    .split_once("Running on http://127.0.0.1:")
                    .and_then(|(_, port)| port.trim().parse::<u16>().ok())
                {
                    if let Some(tx) = port_tx.take() {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        let port =
            tokio::task::spawn_blocking(move || port_rx.recv_timeout(Duration::from_secs(60)))
                .await
                .expect("join");
        let Ok(port) = port else {
            let _ = child.kill();
            panic!("moto_server did not say where it runs: {:?}", child.wait());
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(answer) = client.get(format!("{url}/moto-api/")).send().await {
                if answer.status().is_success() {
                    break;
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("moto_server did not answer on {url}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let config = super::sdk_config(&url).await;
        Emulator { child, url, config }
    }

    /// An S3 client, path-style as slipway's against an endpoint.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.config)
                .force_path_style(true)
                .build(),
        )
    }

    /// Makes bucket `name` (in the emulator's region); an S3 client for it.
    pub async fn bucket(&self, name: &str) -> aws_sdk_s3::Client {
        let s3 = self.s3();
        s3.create_bucket()
            .bucket(name)
            .create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::EuWest1)
                    .build(),
            )
            .send()
            .await
            .expect("CreateBucket");
        s3
    }

    /// Makes slipway's DynamoDB table `name` here, as `slipway provision` does
    /// (`DynamoStore::create_table`).
    pub async fn create_state_table(&self, name: &str) {
        ::slipway::store::dynamodb::DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&self.config),
            name,
            &::slipway::config::JournalConfig::default(),
        )
        .create_table(::slipway::store::millis(time::OffsetDateTime::now_utc()))
        .await
        .unwrap();
    }

    pub fn codebuild(&self) -> aws_sdk_codebuild::Client {
        aws_sdk_codebuild::Client::new(&self.config)
    }

    /// A CodeBuild project building `repository` (GitHub owner/name).
    pub async fn create_project(&self, name: &str, repository: &str) {
        self.codebuild()
            .create_project()
            .name(name)
            .source(
                ProjectSource::builder()
                    .r#type(SourceType::Github)
                    .location(format!("https://github.com/{repository}.git"))
                    .build()
                    .unwrap(),
            )
            .artifacts(
                ProjectArtifacts::builder()
                    .r#type(aws_sdk_codebuild::types::ArtifactsType::NoArtifacts)
                    .build()
                    .unwrap(),
            )
            .environment(
                ProjectEnvironment::builder()
                    .r#type(EnvironmentType::LinuxContainer)
                    .image("aws/codebuild/standard:7.0")
                    .compute_type(ComputeType::BuildGeneral1Small)
                    .privileged_mode(true)
                    .build()
                    .unwrap(),
            )
            .service_role("arn:aws:iam::123456789012:role/codebuild-service-role")
            .send()
            .await
            .expect("CreateProject");
    }

    /// The ids of the builds of `project`.
    pub async fn builds(&self, project: &str) -> Vec<aws_sdk_codebuild::types::Build> {
        let ids = self
            .codebuild()
            .list_builds_for_project()
            .project_name(project)
            .send()
            .await
            .expect("ListBuildsForProject")
            .ids
            .unwrap_or_default();
        if ids.is_empty() {
            return vec![];
        }
        self.codebuild()
            .batch_get_builds()
            .set_ids(Some(ids))
            .send()
            .await
            .expect("BatchGetBuilds")
            .builds
            .unwrap_or_default()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
