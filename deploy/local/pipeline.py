"""The local pipeline: slipway's whole job on this machine, against the AWS emulator.

Run it with deploy/local-pipeline.sh (it installs the emulator and builds slipway first).
Everything it starts lives in a temporary directory and stops with it.
"""

import argparse
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug")
SLIPWAY = os.path.join(TARGET, "slipway")
PROXY = os.path.join(TARGET, "examples", "emulator_proxy")
GITHUB_FAKE = os.path.join(TARGET, "examples", "github_fake")
GITHUB_TOKEN = "github_pat_test"  # what the GitHub fake accepts
MOTO = os.path.join(ROOT, ".venv", "bin", "moto_server")

SHA = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c"  # the commit in fixtures/github/push_master.json
NEXT_SHA = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432"  # another built commit, to try `slipway deploy`
SECRET = "local-webhook-secret"
TOKEN = "local-ops-token-0123456789"
REGION = "eu-west-1"

processes = []


def say(message=""):
    print(message, flush=True)


def step(message):
    say(f"\n==> {message}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, cmd, work, env=None):
    log = open(os.path.join(work, f"{name}.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    processes.append(proc)
    return proc


def wait_for(what, check, timeout=60, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise SystemExit(f"local pipeline: gave up waiting for {what}")


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def aws(service, endpoint):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def put_image(ecr, tag):
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 1469,
            "digest": "sha256:" + hashlib.sha256(b"config" + tag.encode()).hexdigest(),
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": 2811,
                "digest": "sha256:" + hashlib.sha256(tag.encode()).hexdigest(),
            }
        ],
    }
    ecr.put_image(repositoryName="web", imageTag=tag, imageManifest=json.dumps(manifest))


def seed(endpoint):
    """What the user already has: an image in ECR, a cluster, a service, a CodeBuild project."""
    ecr = aws("ecr", endpoint)
    uri = ecr.create_repository(repositoryName="web")["repository"]["repositoryUri"]
    for tag in ("previous", SHA, NEXT_SHA):
        put_image(ecr, tag)
    role = aws("iam", endpoint).create_role(
        RoleName="codebuild-web",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "codebuild.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]["Arn"]
    aws("codebuild", endpoint).create_project(
        name="web-build",
        source={"type": "GITHUB", "location": "https://github.com/octo-org/web.git"},
        artifacts={"type": "NO_ARTIFACTS"},
        environment={
            "type": "LINUX_CONTAINER",
            "image": "aws/codebuild/standard:7.0",
            "computeType": "BUILD_GENERAL1_SMALL",
            "privilegedMode": True,
        },
        serviceRole=role,
    )
    ecs = aws("ecs", endpoint)
    ecs.create_cluster(clusterName="web")
    td = ecs.register_task_definition(
        family="web",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": "web",
                "image": f"{uri}:previous",
                "memory": 512,
                "essential": True,
                "portMappings": [{"containerPort": 8080}],
                "environment": [{"name": "GREETING", "value": "hello"}],
            }
        ],
        tags=[{"key": "Version", "value": "previous"}, {"key": "team", "value": "demo"}],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(
        cluster="web",
        serviceName="web",
        taskDefinition=td,
        desiredCount=2,
        launchType="FARGATE",
        deploymentConfiguration={
            "deploymentCircuitBreaker": {"enable": True, "rollback": True}
        },
    )
    return uri, td


def write_config(path, work, port, admin_port, queue_url=None, github_url=None):
    lines = [
        f'listen = "127.0.0.1:{port}"',  # public: the webhook
        f'admin_listen = "127.0.0.1:{admin_port}"',  # the ops API and the CLI
        f'state_dir = "{os.path.join(work, "state")}"',
    ]
    if queue_url:
        lines.append(f'queue_url = "{queue_url}"')
    if github_url:
        lines += ["", "[github]", f'api_url = "{github_url}"', f'public_url = "http://127.0.0.1:{port}"']
    lines += [
        "",
        "[deploy]",
        "poll_initial_ms = 1000",
        "poll_max_ms = 3000",
        "",
        "[[app]]",
        'name = "web"',
        'repository = "octo-org/web"',
        'branch = "master"',
        'codebuild_project = "web-build"',
        'cluster = "web"',
        'service = "web"',
        'container = "web"',
        'ecr_repository = "web"',
        "rollout_timeout_secs = 120",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def slipway(args, env, check=True):
    out = subprocess.run([SLIPWAY, *args], env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        say(out.stdout + out.stderr)
        raise SystemExit(f"local pipeline: slipway {' '.join(args)} failed")
    return out


def json_rows(text):
    """`--json` output: one JSON array."""
    return json.loads(text)


def show_github(github_url):
    """Prints what slipway posted to the GitHub fake; True if the statuses are complete."""
    step("what GitHub was told (commit statuses, deployments, deployment statuses)")

    def posted():
        with urllib.request.urlopen(f"{github_url}/_fake/requests") as resp:
            requests = json.loads(resp.read())
        statuses = [r for r in requests if r["method"] == "POST" and "/statuses/" in r["path"] and "/deployments/" not in r["path"]]
        done = {(r["body"]["context"], r["body"]["state"]) for r in statuses}
        return requests if {("slipway/build", "success"), ("slipway/deploy/web", "success")} <= done else None

    try:
        requests = wait_for("the statuses", posted, timeout=60, interval=0.5)
    except SystemExit:
        return False
    for r in requests:
        body = r["body"]
        if r["path"].endswith("/deployments"):
            say(f"    deployment of {body['ref'][:7]} to {body['environment']}")
        elif "/deployments/" in r["path"]:
            say(f"    deployment {r['path'].split('/')[-2]}: {body['state']}: {body.get('description', '')}")
        elif "/statuses/" in r["path"]:
            say(f"    {body['context']}: {body['state']}: {body.get('description', '')}")
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ci", action="store_true", help="check the result and exit")
    parser.add_argument(
        "--github", action="store_true", help="post commit statuses and deployments to a local GitHub fake"
    )
    args = parser.parse_args()
    ci = args.ci
    github_url = None

    work = tempfile.mkdtemp(prefix="slipway-local-")
    moto_port, proxy_port, port, admin_port = free_port(), free_port(), free_port(), free_port()
    moto_url = f"http://127.0.0.1:{moto_port}"
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    url = f"http://127.0.0.1:{port}"
    admin_url = f"http://127.0.0.1:{admin_port}"

    step(f"starting the AWS emulator and the rollout proxy (logs in {work})")
    start("emulator", [MOTO, "-H", "127.0.0.1", "-p", str(moto_port)], work)
    wait_for("the emulator", lambda: http_ok(f"{moto_url}/moto-api/"))
    start("proxy", [PROXY, f"127.0.0.1:{proxy_port}", moto_url], work)
    wait_for("the proxy", lambda: http_ok(f"{proxy_url}/_proxy/deployments"))
    # Rollouts take a few polls, as on AWS.
    req = urllib.request.Request(
        f"{proxy_url}/_proxy/rollouts", data=b'["complete:3","complete:3","complete:3"]', method="POST"
    )
    urllib.request.urlopen(req).close()

    if args.github:
        github_url = f"http://127.0.0.1:{free_port()}"
        step(f"starting the GitHub fake on {github_url}")
        start("github", [GITHUB_FAKE, github_url.removeprefix("http://")], work)
        wait_for("the GitHub fake", lambda: http_ok(f"{github_url}/_fake/requests"))

    step("creating what you already have in AWS: ECR image, cluster, service, CodeBuild project")
    uri, first_td = seed(proxy_url)  # through the proxy, which keeps what the emulator drops
    say(f"    service web runs {first_td.rsplit('/', 1)[-1]} ({uri}:previous)")

    env = dict(
        os.environ,
        AWS_ENDPOINT_URL=proxy_url,
        AWS_REGION=REGION,
        AWS_ACCESS_KEY_ID="local",
        AWS_SECRET_ACCESS_KEY="local",
        AWS_EC2_METADATA_DISABLED="true",
        SLIPWAY_WEBHOOK_SECRET=SECRET,
        SLIPWAY_OPS_TOKENS=f"you:{TOKEN}",
    )
    if github_url:
        env["SLIPWAY_GITHUB_TOKEN"] = GITHUB_TOKEN
    config = os.path.join(work, "slipway.toml")
    write_config(config, work, port, admin_port)

    step("slipway provision: the queue, its dead-letter queue and the EventBridge rule")
    out = slipway(["provision", "--config", config], env)
    say("    " + out.stdout.strip().replace("\n", "\n    "))
    queue_url = aws("sqs", proxy_url).get_queue_url(QueueName="slipway-events")["QueueUrl"]
    write_config(config, work, port, admin_port, queue_url, github_url)

    step(f"slipway serve on {url}")
    start("slipway", [SLIPWAY, "serve", "--config", config], work, env)
    wait_for("slipway", lambda: http_ok(f"{url}/readyz"))

    step("GitHub pushes 1f2e3d4 to master (a signed webhook)")
    with open(os.path.join(ROOT, "fixtures", "github", "push_master.json"), "rb") as f:
        body = f.read()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(
        f"{url}/webhooks/github",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "local-demo-1",
            "X-GitHub-Hook-ID": "1",
            "X-Hub-Signature-256": signature,
            "User-Agent": "GitHub-Hookshot/local",
        },
    )
    with urllib.request.urlopen(req) as resp:
        say(f"    {resp.status} {resp.read().decode()}")

    codebuild = aws("codebuild", moto_url)
    build_id = wait_for(
        "the build to start",
        lambda: (codebuild.list_builds_for_project(projectName="web-build")["ids"] or [None])[0],
    )
    build = codebuild.batch_get_builds(ids=[build_id])["builds"][0]
    say(f"    CodeBuild build started: {build_id}")

    step("CodeBuild finishes (the emulator builds nothing: its completion event is played onto the bus)")
    detail = {
        "build-status": "SUCCEEDED",
        "project-name": "web-build",
        "build-id": build["arn"],
        "current-phase": "COMPLETED",
        "current-phase-context": "[: ]",
        "version": "1",
        "additional-information": {
            "build-complete": True,
            "source-version": SHA,
            "logs": {"deep-link": "https://console.aws.amazon.com/cloudwatch/home#logEvent:group=/aws/codebuild/web-build"},
        },
    }
    aws("events", moto_url).put_events(
        Entries=[
            {
                "Source": "aws.codebuild",
                "DetailType": "CodeBuild Build State Change",
                "Resources": [build["arn"]],
                "Detail": json.dumps(detail),
            }
        ]
    )

    step("slipway deploys it")
    seen = set()
    # serve holds the journal: the CLI asks it through the admin API, as an operator would.
    cli_env = dict(env, SLIPWAY_SERVER=admin_url, SLIPWAY_OPS_TOKEN=TOKEN)

    def deployed():
        rows = json_rows(slipway(["deployments", "--json"], cli_env).stdout)
        for d in rows:
            line = f"    deployment {d['id']}: {d['state']}"
            if d.get("running_count") is not None:
                line += f", {d['running_count']}/{d['desired_count']} tasks running"
            if line not in seen:
                seen.add(line)
                say(line)
            if d["state"] not in ("pending", "deploying"):
                return d
        return None

    d = wait_for("the deploy", deployed, timeout=180, interval=0.5)
    ecs = aws("ecs", moto_url)
    running = ecs.describe_services(cluster="web", services=["web"])["services"][0]["taskDefinition"]
    ok = d["state"] == "succeeded" and running == d["to_task_definition"] and d["image"] == f"{uri}:{SHA}"
    say(f"    new task definition: {d['to_task_definition'].rsplit('/', 1)[-1]}")
    say(f"    image:               {d['image']}")
    say(f"    rollout:             {d['state']} ({d.get('reason') or ''})")
    say(f"    service web now runs {running.rsplit('/', 1)[-1]}")
    if not ok:
        say(f"\nlocal pipeline: the deploy did not end as expected; see {work}/slipway.log")
        return 1
    if github_url and not show_github(github_url):
        say(f"\nlocal pipeline: GitHub did not get the expected statuses; see {work}/slipway.log")
        return 1
    if ci:
        say("\nlocal pipeline: ok")
        return 0

    say(
        f"""
slipway is running. The status page: {url}/  (metrics: {url}/metrics)
In another terminal, try:

    export SLIPWAY_SERVER={admin_url} SLIPWAY_OPS_TOKEN={TOKEN}
    target/debug/slipway status
    target/debug/slipway deploy web {NEXT_SHA[:7]} --wait
    target/debug/slipway rollback web --wait
    target/debug/slipway deployments
    target/debug/slipway deliveries

Logs: {work}/slipway.log. Ctrl-C stops everything."""
    )
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(1)
        say("local pipeline: a process exited; see the logs")
        return 1
    except KeyboardInterrupt:
        say("\nstopping")
        return 0


if __name__ == "__main__":
    try:
        code = main()
    finally:
        for p in reversed(processes):
            p.terminate()
        for p in processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    sys.exit(code)
