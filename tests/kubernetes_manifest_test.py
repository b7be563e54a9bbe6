"""examples/kubernetes/llama-elastic.yaml, checked without a cluster: its parts are what the
README says (etcd StatefulSet behind a headless service, an indexed Job behind another), every
variable the trainer's pod sets is one tenax (or the pod's own command) reads, and the pod's
command, run here as two pods would run it (JOB_COMPLETION_INDEX 0 and 1, the pod address
127.0.0.1, the Secret's etcd password against a local etcd with auth on, a tiny model and a
few steps instead of the manifest's), trains to the end.

Usage: python3 kubernetes_manifest_test.py MANIFEST SOURCE_DIR TENAXRUN LLAMA_TRAIN TRAIN_BIN
"""
import os, re, shutil, socket, subprocess, sys, tempfile, time

import yaml

manifest, source, tenaxrun, llama_train, train_bin = map(os.path.abspath, sys.argv[1:6])
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


docs = [d for d in yaml.safe_load_all(open(manifest)) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
etcd_svc, etcd_set = by.get(("Service", "etcd")), by.get(("StatefulSet", "etcd"))
job, job_svc = by.get(("Job", "llama-elastic")), by.get(("Service", "llama-elastic"))
secret = by.get(("Secret", "llama-elastic"))
check(etcd_svc and etcd_svc["spec"].get("clusterIP") == "None", "etcd: a headless service")
check(etcd_set and etcd_set["spec"]["replicas"] == 3 and etcd_set["spec"]["serviceName"] == "etcd",
      "etcd: a StatefulSet of 3 behind it")
check(job and job["spec"]["completionMode"] == "Indexed", "the trainers: an indexed Job")
check(job_svc and job_svc["spec"].get("clusterIP") == "None", "the trainers: a headless service")
pod = job["spec"]["template"]["spec"]
check(pod.get("subdomain") == "llama-elastic", "the Job's pods in the trainers' service")
check(pod.get("terminationGracePeriodSeconds", 30) >= 30, "time to persist after SIGTERM")
trainer = pod["containers"][0]
command = " ".join(trainer["command"][2:] + trainer["args"]) if trainer["command"][:2] == [
    "/bin/sh", "-c"] else None
check(command is not None, "the trainer runs its command through /bin/sh -c")

# Every variable the pod sets is read by tenax (settings, bootstrap, tenaxrun, the AWS client)
# or used by the pod's own command.
env = trainer["env"]
used = set(re.findall(r"\$\((\w+)\)", command))
read_by_tenax = set()
for path in ["src/core/config.cc", "src/comm/bootstrap.cc", "tools/tenaxrun.cc"]:
    read_by_tenax |= set(re.findall(r'"([A-Z][A-Z0-9_]+)"', open(os.path.join(source, path)).read()))
for e in env:
    check(e["name"] in used or e["name"] in read_by_tenax,
          f"{e['name']}: set by the manifest, read by nothing")
defined = {e["name"] for e in env} | {"JOB_COMPLETION_INDEX"}  # Kubernetes sets it (Indexed)
for name in used:
    check(name in defined, f"$({name}) in the command is never set")
endpoint = re.search(r"--rdzv-endpoint (etcd://\S+)", command)
check(endpoint is not None, "tenaxrun's endpoint is etcd")
hosts = re.findall(r"(etcd-\d)\.etcd:2379", endpoint.group(1) if endpoint else "")
check(hosts == ["etcd-0", "etcd-1", "etcd-2"], "the endpoint lists the StatefulSet's members")

if failures:
    print("\n".join("FAIL " + f for f in failures))
    sys.exit(1)

# The command, run as two pods would run it.
work = tempfile.mkdtemp(prefix="tenax-k8s-", dir="/dev/shm")
etcd = None
pods = []
try:
    with socket.socket() as s1, socket.socket() as s2:
        s1.bind(("127.0.0.1", 0))
        s2.bind(("127.0.0.1", 0))
        client, peer = s1.getsockname()[1], s2.getsockname()[1]
    etcd = subprocess.Popen(
        ["etcd", "--name", "m0", "--data-dir", work + "/etcd",
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"m0=http://127.0.0.1:{peer}", "--log-level", "error",
         "--logger", "zap"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    password = secret["stringData"]["etcd-password"]
    ctl = ["etcdctl", f"--endpoints=127.0.0.1:{client}", "--command-timeout=2s"]
    for _ in range(100):
        if subprocess.run(ctl + ["endpoint", "health"], capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    for args in (["user", "add", f"root:{password}"], ["auth", "enable"]):
        r = subprocess.run(ctl + args, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("etcdctl " + " ".join(args) + ": " + r.stdout + r.stderr)
    bin_dir = os.path.join(work, "bin")
    os.mkdir(bin_dir)
    os.symlink(tenaxrun, os.path.join(bin_dir, "tenaxrun"))
    os.symlink(llama_train, os.path.join(bin_dir, "llama_train"))
    # What differs from a real cluster: the scale, the data, the durable tier, and where the
    # etcd members are.
    overrides = {"NPROC_PER_NODE": "2", "STEPS": "6", "DATA": train_bin,
                 "CKPT_DIR": work + "/durable",
                 "MODEL_FLAGS": "--preset tiny --global-batch 12 --micro-batch 4 --log-interval 1 "
                                  "--max-workers 4"}
    local = command.replace("etcd-0.etcd:2379,etcd-1.etcd:2379,etcd-2.etcd:2379",
                            f"127.0.0.1:{client}")
    for index in (0, 1):
        penv = dict(os.environ)
        penv["PATH"] = bin_dir + ":" + penv["PATH"]
        for e in env:
            if "value" in e:
                penv[e["name"]] = overrides.get(e["name"], e["value"])
            elif "fieldRef" in e["valueFrom"]:
                check(e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP",
                      f"{e['name']}: only the pod's address comes from the downward API")
                penv[e["name"]] = "127.0.0.1"
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                check(ref["name"] == "llama-elastic", f"{e['name']}: from the manifest's Secret")
                penv[e["name"]] = secret["stringData"][ref["key"]]
        penv["JOB_COMPLETION_INDEX"] = str(index)
        expanded = re.sub(r"\$\((\w+)\)", lambda m: penv[m.group(1)], local)
        pods.append(subprocess.Popen(["/bin/sh", "-c", expanded], env=penv, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [p.communicate(timeout=240)[0] for p in pods]
    out = "".join(outputs)
    for i, p in enumerate(pods):
        check(p.returncode == 0, f"pod {i} exited with status {p.returncode}")
    check("generation 1: 4 ranks" in out, "the two pods' four ranks formed one generation")
    check("llama_train: done, 6 steps" in out, "the job trained to the end")
    if failures:
        print(out[-6000:])
finally:
    for p in pods:
        if p.poll() is None:
            p.kill()
    if etcd:
        etcd.kill()
        etcd.wait()
    shutil.rmtree(work, ignore_errors=True)

if failures:
    print("\n".join("FAIL " + f for f in failures))
    sys.exit(1)
print("the manifest sets what tenax reads, and its command trains")
