"""
Everything the benchmark talks to, started and stopped on 127.0.0.1 only.

- L{Sink}: Postfix's ``smtp-sink``, a C program that accepts mail and
  throws it away.  It is a standalone program: no Postfix daemon is started
  (L{check_tools} refuses to run while one is up, so nothing is left behind).
- L{Helper}: one nginx (HTTP) instance that plays both decision services:
  ``/api`` answers smtpproxy's policy POST with ``{"allow": true,
  "headers": []}`` and ``/auth`` answers nginx-mail's ``auth_http`` with
  ``Auth-Status: OK`` and the sink's address.  The ``-slow`` variants answer
  after an added latency (echo module's ``echo_sleep``), so scenario S4
  delays both proxies' decision alike.  C, keep-alive, no access log: it
  costs the measurement almost nothing.
- L{NginxMail}: the competitor, nginx's mail proxy (STARTTLS only, AUTH
  PLAIN, auth_http, no XCLIENT), one worker process, as smtpproxy is one
  process.  Its worker is the measured process.
- L{SmtpProxy}: the project, run by the checkout's code with the venv's
  twistd, at its default log level (one info line per message).

Every server gets a fresh directory for its config and logs.  CPU pinning
(see run.py) is applied with C{sched_setaffinity} in the child before exec.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from procstat import children

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv", "bin")
MODULES = "/usr/lib/nginx/modules"
PACKAGES = "postfix nginx libnginx-mod-mail libnginx-mod-http-echo"
BACKLOG = 4096
"""
The listen backlog of both proxies.  Twisted's default is 50 (nginx's 511):
with 200 clients connecting at once (S4) the accept queue overflows, the
kernel drops the handshake's last ACK, and clients that believe they are
connected wait for a greeting that never comes.  The same, large backlog
for both keeps that out of the comparison; smtpproxy is given it through an
endpoint string, which --listen accepts.
"""


class SetupError(Exception):
    """A tool is missing or a server did not come up; the message says what to do."""


def smtp_sink_path():
    for path in ("/usr/sbin/smtp-sink", shutil.which("smtp-sink") or ""):
        if path and os.access(path, os.X_OK):
            return path
    return None


def postfix_daemon_running():
    """A Postfix master process (from the package's own service) is up."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0")[0]
            except OSError:
                continue
            if argv0.endswith(b"/postfix/sbin/master") or argv0 == b"master":
                return True
    return False


def check_tools():
    """Raise L{SetupError} naming the install step if anything is missing."""
    missing = []
    if smtp_sink_path() is None:
        missing.append("smtp-sink (postfix)")
    if not shutil.which("nginx"):
        missing.append("nginx")
    for module in ("ngx_mail_module.so", "ngx_http_echo_module.so"):
        if not os.path.exists(os.path.join(MODULES, module)):
            missing.append(module)
    if not os.path.exists(os.path.join(VENV, "twistd")):
        missing.append(f"{VENV}/twistd (the project's venv)")
    if missing:
        raise SetupError(
            "missing: " + ", ".join(missing) + ".  Install with: bash bench/setup.sh"
        )
    if postfix_daemon_running():
        raise SetupError("a Postfix daemon is running; stop it first: postfix stop")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_greeting(port, timeout=20.0, process=None):
    """Wait until an SMTP server on C{port} sends its 220 greeting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SetupError(f"server on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SetupError(f"no SMTP greeting on 127.0.0.1:{port} within {timeout} s")


def wait_for_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SetupError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _pinned(cpus):
    """A preexec_fn that pins the child (and all it starts) to C{cpus}."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


class Server:
    """A child process with its own directory; L{stop} ends only that process."""

    name = "server"
    process = None

    def __init__(self, workdir, cpus=None):
        self.dir = os.path.join(workdir, self.name)
        os.makedirs(self.dir, exist_ok=True)
        self.cpus = cpus
        self.port = free_port()

    def _spawn(self, argv, env=None, log="output.log", inherit=None):
        """Start C{argv}; C{inherit}: a descriptor the child gets as its descriptor 3."""
        out = open(os.path.join(self.dir, log), "ab")
        pin = _pinned(self.cpus)

        def prepare():
            if pin is not None:
                pin()
            if inherit == 3:
                os.set_inheritable(3, True)
            elif inherit is not None:
                os.dup2(inherit, 3)

        self.process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.dir, env=env, preexec_fn=prepare, pass_fds=() if inherit is None else (3,),
        )
        out.close()

    @property
    def pid(self):
        """The process whose CPU and memory are measured."""
        return self.process.pid

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines=5):
        text = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".log"):
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text += [f"{name}: {line.rstrip()}" for line in f.readlines()[-lines:]]
        return "\n".join(text)


class Sink(Server):
    """Postfix's smtp-sink: accepts every message and discards it."""

    name = "sink"

    def start(self):
        self._spawn([
            smtp_sink_path(),
            "-u", "nobody",      # required when started as root
            "-a", "-C", "-F",    # no AUTH, XCLIENT or XFORWARD on offer
            "-m", "8192",        # simultaneous sessions (S5 holds 1000 via nginx)
            "-t", "600",
            f"127.0.0.1:{self.port}", "4096",
        ])
        wait_for_greeting(self.port, process=self.process)
        return self


def _nginx_worker(process, timeout=10.0):
    """The pid of the worker of an nginx master we started (one worker)."""
    deadline = time.monotonic() + timeout
    while not children(process.pid):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SetupError("nginx started no worker (see its error.log)")
        time.sleep(0.05)
    return children(process.pid)[0]


def _nginx_common(directory):
    """Top of an nginx config that keeps every file inside C{directory}."""
    return f"""
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
worker_rlimit_nofile 20000;
"""


class Helper(Server):
    """
    The fake policy API (for smtpproxy) and auth_http responder (for
    nginx-mail), both in one small nginx.
    """

    name = "helper"

    def __init__(self, workdir, sink_port, slow_ms, cpus=None):
        super().__init__(workdir, cpus)
        self.sink_port = sink_port
        self.slow_ms = slow_ms

    def url(self, what, slow=False):
        return f"http://127.0.0.1:{self.port}/{what}{'-slow' if slow else ''}"

    def start(self):
        d = self.dir
        sleep = f"echo_sleep {self.slow_ms / 1000:.3f};"
        auth = (
            "add_header Auth-Status OK; add_header Auth-Server 127.0.0.1; "
            f"add_header Auth-Port {self.sink_port};"
        )
        conf = _nginx_common(d) + f"""
load_module {MODULES}/ngx_http_echo_module.so;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_body_buffer_size 64k;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        location = /api {{
            default_type application/json;
            echo_read_request_body;
            echo '{{"allow": true, "headers": []}}';
        }}
        location = /api-slow {{
            default_type application/json;
            echo_read_request_body;
            {sleep}
            echo '{{"allow": true, "headers": []}}';
        }}
        location = /auth {{ {auth} echo ok; }}
        location = /auth-slow {{ {sleep} {auth} echo ok; }}
    }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self._spawn(["nginx", "-p", d, "-c", path, "-e", f"{d}/error.log"])
        wait_for_port(self.port)
        self.worker = _nginx_worker(self.process)
        return self


class NginxMail(Server):
    """nginx's mail proxy: STARTTLS only, AUTH PLAIN, auth_http, one worker."""

    name = "nginx"
    label = "nginx-mail"

    def __init__(self, workdir, certs, auth_url, cpus=None, **_):
        super().__init__(workdir, cpus)
        self.certs = certs
        self.auth_url = auth_url.removeprefix("http://")

    def start(self):
        d = self.dir
        conf = _nginx_common(d) + f"""
load_module {MODULES}/ngx_mail_module.so;
events {{ worker_connections 8192; }}
mail {{
    server_name localhost;
    auth_http {self.auth_url};
    xclient off;
    proxy_pass_error_message on;
    ssl_certificate {self.certs.cert_path};
    ssl_certificate_key {self.certs.key_path};
    ssl_protocols TLSv1.2 TLSv1.3;
    server {{
        listen 127.0.0.1:{self.port} backlog={BACKLOG};
        protocol smtp;
        smtp_auth plain;
        starttls only;
        smtp_capabilities PIPELINING 8BITMIME "SIZE 2147483648" ENHANCEDSTATUSCODES;
        timeout 600s;
    }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self._spawn(["nginx", "-p", d, "-c", path, "-e", f"{d}/error.log"])
        wait_for_greeting(self.port, process=self.process)
        self._worker = _nginx_worker(self.process)
        return self

    @property
    def pid(self):
        return self._worker


class SmtpProxy(Server):
    """
    smtpproxy from the checkout (PYTHONPATH) with the venv's twistd.

    Options beyond the mandatory ones: --max_message_size=2 GiB so S6's
    1 GiB message is accepted; connection limits raised past S5's 1000
    sessions when this version of the plugin has those options; the listen
    backlog of L{BACKLOG}.

    C{BENCH_EXTRA_PYTHONPATH} (directories) is put after the checkout on
    smtpproxy's path: a C{sitecustomize.py} there can patch the proxy at
    start-up, to measure an optimisation before it is made in the code.
    """

    name = "smtpproxy"
    label = "smtpproxy"

    def __init__(self, workdir, certs, api_url, sink_port, cpus=None, loglevel="info",
                 python_args=(), workers=1, options=(), **_):
        super().__init__(workdir, cpus)
        self.certs = certs
        self.api_url = api_url
        self.sink_port = sink_port
        self.loglevel = loglevel
        self.python_args = list(python_args)
        self.workers = workers
        self.options = list(options)
        self.others = []

    @staticmethod
    def supported_options():
        """The --options this checkout's plugin knows (from --help)."""
        env = dict(os.environ, PYTHONPATH=ROOT)
        out = subprocess.run(
            [os.path.join(VENV, "twistd"), "smtpproxy", "--help"],
            capture_output=True, text=True, env=env, cwd="/tmp",
        ).stdout
        return {word.split("=")[0] for word in out.split() if word.startswith("--")}

    def argv(self):
        known = self.supported_options()
        argv = [
            os.path.join(VENV, "python"), *self.python_args,
            os.path.join(VENV, "twistd"), "-n", "--pidfile=", "smtpproxy",
            f"--listen=tcp:{self.port}:interface=127.0.0.1:backlog={BACKLOG}",
            "--tohost=127.0.0.1", f"--toport={self.sink_port}",
            f"--tls_cert={self.certs.cert_path}", f"--tls_key={self.certs.key_path}",
            f"--api={self.api_url}",
            "--hostname=localhost",
            f"--loglevel={self.loglevel}",
            f"--logpath={self.dir}/smtpproxy.log",
            "--max_message_size=2147483648",
        ]
        for option, value in (("--max_connections", 5000), ("--max_connections_per_ip", 5000)):
            if option in known:
                argv.append(f"{option}={value}")
        return argv + self.options

    def start(self):
        extra = os.environ.get("BENCH_EXTRA_PYTHONPATH")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + ([extra] if extra else [])))
        if self.workers == 1:
            self._spawn(self.argv(), env=env)
        else:
            self._spawn_workers(env)
        wait_for_greeting(self.port, timeout=30, process=self.process)
        return self

    def _spawn_workers(self, env):
        """
        C{workers} processes on one listening socket, passed to each as
        systemd passes it to each instance of contrib/smtpproxy@.service
        (file descriptor 3, C{LISTEN_FDS}, C{LISTEN_PID} = the child's pid).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(BACKLOG)
        env = dict(env, LISTEN_FDS="1", LISTEN_FDNAMES="submission")
        common = [arg for arg in self.argv() if not arg.startswith(("--listen=", "--logpath="))]
        for number in range(1, self.workers + 1):
            argv = common + ["--listen=systemd:domain=INET:name=submission",
                             f"--logpath={self.dir}/smtpproxy-{number}.log"]
            self._spawn(["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *argv], env=env,
                        inherit=sock.fileno())
            self.others.append(self.process)
        self.process = self.others.pop(0)
        sock.close()

    @property
    def pids(self):
        """Every process whose CPU and memory count (more than one with C{workers})."""
        return [self.process.pid] + [other.pid for other in self.others]

    def stop(self):
        for other in self.others:
            other.send_signal(signal.SIGTERM)
        super().stop()
        for other in self.others:
            other.wait(timeout=15)


class Direct:
    """The baseline: the load generator talks plain SMTP to the sink itself."""

    label = "sink (direct)"
    pid = None

    def __init__(self, sink):
        self.port = sink.port

    def start(self):
        return self

    def stop(self):
        pass


def python():
    """The interpreter for the load generator: only the stdlib is needed."""
    return sys.executable
