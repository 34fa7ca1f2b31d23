#!/usr/bin/env bash
# Installs, starts and stops the local AWS API emulators that esm's tests, demo
# and benchmarks talk to. Everything listens on 127.0.0.1 only.
#
#   scripts/emulators.sh install        install kinesis-local (npm) if missing
#   scripts/emulators.sh install-moto   install moto[server] (PyPI) into a venv
#   scripts/emulators.sh install-python install awslambdaric and aws_kinesis_agg
#                                       (PyPI) into a venv
#   scripts/emulators.sh start          install if needed, start kinesis-local and
#                                       the moto server (SQS, SNS, S3, DynamoDB)
#   scripts/emulators.sh stop           stop what `start` started
#   scripts/emulators.sh status         exit 0 if both the Kinesis and the moto
#                                       ports accept connections
#   scripts/emulators.sh env            print `export` lines for the AWS SDK:
#                                         eval "$(scripts/emulators.sh env)"
#
# Settings (environment):
#   ESM_EMULATORS_DIR      where emulators, logs and pid files live
#                          (default: $HOME/.cache/esm-emulators)
#   ESM_KINESIS_PORT       plain HTTP port of kinesis-local (default: 4567)
#   ESM_KINESIS_TLS_PORT   TLS/HTTP2 port of kinesis-local (default: 4568)
#   ESM_MOTO_PORT          port of the moto server (default: 5000)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EMULATORS_DIR="${ESM_EMULATORS_DIR:-$HOME/.cache/esm-emulators}"
KINESIS_PORT="${ESM_KINESIS_PORT:-4567}"
KINESIS_TLS_PORT="${ESM_KINESIS_TLS_PORT:-4568}"
MOTO_PORT="${ESM_MOTO_PORT:-5000}"

KINESIS_VERSION="0.6.2"
KINESIS_PREFIX="$EMULATORS_DIR/kinesis"
KINESIS_PKG="$KINESIS_PREFIX/node_modules/kinesis-local"
KINESIS_LOG="$EMULATORS_DIR/kinesis.log"
KINESIS_PID="$EMULATORS_DIR/kinesis.pid"
# kinesis-local binds 0.0.0.0 (all interfaces) and has no setting for the
# host; this preload makes it listen on 127.0.0.1 instead (see the file).
KINESIS_LOOPBACK_PRELOAD="$SCRIPT_DIR/kinesis-loopback.cjs"
MOTO_VENV="$EMULATORS_DIR/moto-venv"
MOTO_LOG="$EMULATORS_DIR/moto.log"
MOTO_PID="$EMULATORS_DIR/moto.pid"
# Python with AWS's Lambda runtime interface client, for the Runtime API tests.
PYTHON_VENV="$EMULATORS_DIR/python-venv"
AWSLAMBDARIC_VERSION="4.2.2"
# KPL's aggregation format from Python (AWS's own package), for the KPL e2e tests;
# it imports six without declaring it, and protobuf is pinned with it.
AWS_KINESIS_AGG_VERSION="1.2.3"
SIX_VERSION="1.17.0"
PROTOBUF_VERSION="7.36.2"

log() { printf 'emulators: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

kinesis_installed() {
	[[ -f "$KINESIS_PKG/main.js" && -f "$KINESIS_PKG/server.json" && -f "$KINESIS_PKG/package.json" ]] &&
		grep -Eq "\"version\"[[:space:]]*:[[:space:]]*\"$KINESIS_VERSION\"" "$KINESIS_PKG/package.json"
}

cmd_install() {
	if kinesis_installed; then
		return 0
	fi
	command -v node >/dev/null 2>&1 || die "node is not installed (apt-get install -y nodejs npm)"
	command -v npm >/dev/null 2>&1 || die "npm is not installed (apt-get install -y nodejs npm)"
	log "installing kinesis-local@$KINESIS_VERSION into $KINESIS_PREFIX"
	mkdir -p "$KINESIS_PREFIX"
	npm install --prefix "$KINESIS_PREFIX" --no-audit --no-fund --loglevel=error \
		"kinesis-local@$KINESIS_VERSION" >&2
	kinesis_installed || die "kinesis-local@$KINESIS_VERSION is not in $KINESIS_PKG after npm install"
}

cmd_install_python() {
	if [[ -x "$PYTHON_VENV/bin/python" ]] && "$PYTHON_VENV/bin/python" -c 'import awslambdaric, aws_kinesis_agg.aggregator' 2>/dev/null; then
		return 0
	fi
	command -v python3 >/dev/null 2>&1 || die "python3 is not installed"
	log "installing awslambdaric==$AWSLAMBDARIC_VERSION aws_kinesis_agg==$AWS_KINESIS_AGG_VERSION into $PYTHON_VENV"
	mkdir -p "$EMULATORS_DIR"
	python3 -m venv "$PYTHON_VENV"
	"$PYTHON_VENV/bin/pip" install --quiet --disable-pip-version-check \
		"awslambdaric==$AWSLAMBDARIC_VERSION" "aws_kinesis_agg==$AWS_KINESIS_AGG_VERSION" \
		"six==$SIX_VERSION" "protobuf==$PROTOBUF_VERSION" >&2
	"$PYTHON_VENV/bin/python" -c 'import awslambdaric, aws_kinesis_agg.aggregator' ||
		die "awslambdaric or aws_kinesis_agg does not import after install"
}

cmd_install_moto() {
	if [[ -x "$MOTO_VENV/bin/python" ]] && "$MOTO_VENV/bin/python" -c 'import moto.server' 2>/dev/null; then
		return 0
	fi
	command -v python3 >/dev/null 2>&1 || die "python3 is not installed"
	log "installing moto[server] into $MOTO_VENV"
	mkdir -p "$EMULATORS_DIR"
	python3 -m venv "$MOTO_VENV"
	"$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' >&2
	"$MOTO_VENV/bin/python" -c 'import moto.server' || die "moto[server] does not import after install"
}

# The pid in pid file $1, if that process is still running and its command
# line contains $2 (a guard against a recycled pid).
pid_from_file() {
	[[ -f "$1" ]] || return 1
	local pid
	pid="$(cat "$1" 2>/dev/null || true)"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
	printf '%s\n' "$pid"
}

# The pid in the pid file, if that process is still a running kinesis-local.
running_pid() {
	pid_from_file "$KINESIS_PID" 'main.js'
}

# The pid in the moto pid file, if that process is still a running moto server.
running_moto_pid() {
	pid_from_file "$MOTO_PID" 'moto.server'
}

# Ends process $1 (TERM, then KILL after 5 s).
stop_pid() {
	local i
	kill -TERM "$1" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$1" 2>/dev/null || true
}

cmd_start() {
	start_kinesis
	start_moto
}

start_moto() {
	local pid
	if port_open "$MOTO_PORT"; then
		if pid="$(running_moto_pid)"; then
			log "moto server already running on 127.0.0.1:$MOTO_PORT (pid $pid)"
		else
			log "something already listens on 127.0.0.1:$MOTO_PORT; reusing it as the moto server"
		fi
		return 0
	fi
	cmd_install_moto
	mkdir -p "$EMULATORS_DIR"
	rm -f "$MOTO_PID"
	log "starting the moto server on 127.0.0.1:$MOTO_PORT, log $MOTO_LOG"
	# setsid: see start_kinesis.
	setsid "$MOTO_VENV/bin/python" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" \
		</dev/null >"$MOTO_LOG" 2>&1 &
	pid=$!
	printf '%s\n' "$pid" >"$MOTO_PID"

	local i
	for ((i = 0; i < 600; i++)); do
		if port_open "$MOTO_PORT"; then
			log "moto server is up (pid $pid)"
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			rm -f "$MOTO_PID"
			tail -n 20 "$MOTO_LOG" >&2 || true
			die "the moto server exited before listening on 127.0.0.1:$MOTO_PORT (log above)"
		fi
		sleep 0.1
	done
	tail -n 20 "$MOTO_LOG" >&2 || true
	stop_pid "$pid"
	rm -f "$MOTO_PID"
	die "the moto server did not listen on 127.0.0.1:$MOTO_PORT within 60 s"
}

start_kinesis() {
	local pid
	if port_open "$KINESIS_PORT"; then
		if pid="$(running_pid)"; then
			log "kinesis-local already running on 127.0.0.1:$KINESIS_PORT (pid $pid)"
		else
			log "something already listens on 127.0.0.1:$KINESIS_PORT; reusing it as the Kinesis emulator"
		fi
		return 0
	fi
	cmd_install
	mkdir -p "$EMULATORS_DIR"
	rm -f "$KINESIS_PID"
	log "starting kinesis-local on 127.0.0.1:$KINESIS_PORT (TLS 127.0.0.1:$KINESIS_TLS_PORT), log $KINESIS_LOG"
	# From inside the package folder: kinesis-local reads server.json (its TLS
	# certificate) from the working directory. setsid puts it in a session of
	# its own, so a Ctrl-C in the terminal that started it does not kill it
	# under a still-running esm; `stop` (or a caller's trap) ends it.
	(
		cd "$KINESIS_PKG"
		exec env \
			KINESIS_MOCK_PLAIN_PORT="$KINESIS_PORT" \
			KINESIS_MOCK_TLS_PORT="$KINESIS_TLS_PORT" \
			CREATE_STREAM_DURATION=0ms \
			DELETE_STREAM_DURATION=0ms \
			REGISTER_STREAM_CONSUMER_DURATION=0ms \
			UPDATE_SHARD_COUNT_DURATION=200ms \
			SPLIT_SHARD_DURATION=200ms \
			MERGE_SHARDS_DURATION=200ms \
			SHARD_LIMIT=10000 \
			LOG_LEVEL=WARN \
			setsid node --require "$KINESIS_LOOPBACK_PRELOAD" main.js
	) </dev/null >"$KINESIS_LOG" 2>&1 &
	pid=$!
	printf '%s\n' "$pid" >"$KINESIS_PID"

	local i
	for ((i = 0; i < 300; i++)); do
		if port_open "$KINESIS_PORT"; then
			log "kinesis-local is up (pid $pid)"
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			rm -f "$KINESIS_PID"
			tail -n 20 "$KINESIS_LOG" >&2 || true
			die "kinesis-local exited before listening on 127.0.0.1:$KINESIS_PORT (log above)"
		fi
		sleep 0.1
	done
	tail -n 20 "$KINESIS_LOG" >&2 || true
	kill "$pid" 2>/dev/null || true
	rm -f "$KINESIS_PID"
	die "kinesis-local did not listen on 127.0.0.1:$KINESIS_PORT within 30 s"
}

cmd_stop() {
	local pid
	if pid="$(running_pid)"; then
		stop_pid "$pid"
		log "stopped kinesis-local (pid $pid)"
	fi
	rm -f "$KINESIS_PID"
	if pid="$(running_moto_pid)"; then
		stop_pid "$pid"
		log "stopped the moto server (pid $pid)"
	fi
	rm -f "$MOTO_PID"
}

cmd_status() {
	local up=0
	if port_open "$KINESIS_PORT"; then
		log "Kinesis emulator listening on 127.0.0.1:$KINESIS_PORT"
	else
		log "nothing listens on 127.0.0.1:$KINESIS_PORT (Kinesis emulator)"
		up=1
	fi
	if port_open "$MOTO_PORT"; then
		log "moto server listening on 127.0.0.1:$MOTO_PORT"
	else
		log "nothing listens on 127.0.0.1:$MOTO_PORT (moto server)"
		up=1
	fi
	return "$up"
}

cmd_env() {
	cat <<EOF
export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:$KINESIS_PORT
export AWS_ENDPOINT_URL_SQS=http://127.0.0.1:$MOTO_PORT
export AWS_ENDPOINT_URL_SNS=http://127.0.0.1:$MOTO_PORT
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$MOTO_PORT
export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$MOTO_PORT
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export ESM_TEST_PYTHON=$PYTHON_VENV/bin/python
EOF
}

usage() {
	sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

case "${1:-}" in
install) cmd_install ;;
install-moto) cmd_install_moto ;;
install-python) cmd_install_python ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
-h | --help | help)
	usage
	;;
*)
	usage
	exit 2
	;;
esac
