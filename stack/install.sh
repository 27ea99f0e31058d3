#!/usr/bin/env bash
# Installs what the product and its tests need, and nothing twice:
#  - Debian packages (PostgreSQL, Redis, a Java runtime and Maven for Kafka; Chromium and its
#    WebDriver for the admin's browser test; HAProxy for the topology test) when missing and root;
#  - a virtualenv with the pinned Python requirements (redone only when a requirements file changes);
#  - Apache Kafka's jars from Maven Central (fetched once into the data folder).
source "$(dirname "$0")/lib.sh"

need_pkgs=()
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || need_pkgs+=(postgresql)
command -v java >/dev/null || need_pkgs+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_pkgs+=(maven)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
# The admin's browser test (tests/links/test_admin_browser.py) drives Debian's Chromium through
# Debian's chromedriver, which match each other's version; selenium (requirements-test.txt)
# talks to it. Nothing downloads a browser build of its own.
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v chromedriver >/dev/null || need_pkgs+=(chromium-driver)
# The topology test's load balancer in front of two masters (tests/scale, `make test-scale`).
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if is_root; then
    log "installing Debian packages: ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    die "missing: ${need_pkgs[*]}; install them (as root: apt-get install ${need_pkgs[*]}) and run again"
  fi
fi

# Python: the virtualenv (its own script, for `make test-fast`, which needs nothing else).
"$(dirname "$0")/venv.sh"

# Kafka: the broker's jars, resolved by Maven (see stack/kafka/pom.xml for why).
pom_hash=$(sha256sum "$ROOT/stack/kafka/pom.xml" | cut -c1-16)
if [ "$(cat "$DATA/kafka/libs/.pom" 2>/dev/null)" != "$pom_hash" ]; then
  log "fetching Apache Kafka jars from Maven Central"
  rm -rf "$DATA/kafka/libs"
  mkdir -p "$DATA/kafka/libs"
  mvn -B -q -f "$ROOT/stack/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$DATA/kafka/libs"
  echo "$pom_hash" > "$DATA/kafka/libs/.pom"
fi
