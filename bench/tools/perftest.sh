#!/usr/bin/env bash
# RabbitMQ's PerfTest (com.rabbitmq:perf-test) from Maven Central, for the
# rabbitmq bench's baseline: the jar and its dependencies are copied by
# Maven (dependency:copy-dependencies of a generated one-dependency POM)
# into <target>/bench/perftest/VERSION/lib, with Maven's local repository
# under <target>/bench/perftest/m2, once; later calls are a no-op.
#
#   bash bench/tools/perftest.sh            # prints the classpath (lib/*)
#   PERFTEST_VERSION=2.22.1 bash bench/tools/perftest.sh
#
# Run it with: java -cp "$(bash bench/tools/perftest.sh)" com.rabbitmq.perf.PerfTest ...
# Needs java (17 here) and mvn on the PATH; CARGO_TARGET_DIR is respected.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
version="${PERFTEST_VERSION:-2.22.1}"
cache="$target/bench/perftest"
lib="$cache/$version/lib"

if [[ -f "$cache/$version/.done" ]] && compgen -G "$lib/perf-test-*.jar" >/dev/null; then
  echo "$lib/*"
  exit 0
fi
command -v mvn >/dev/null || { echo "perftest: mvn not found" >&2; exit 1; }
command -v java >/dev/null || { echo "perftest: java not found" >&2; exit 1; }
mkdir -p "$cache/$version"
cat >"$cache/$version/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>wsbridge.bench</groupId>
  <artifactId>perftest-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>com.rabbitmq</groupId>
      <artifactId>perf-test</artifactId>
      <version>$version</version>
    </dependency>
  </dependencies>
</project>
POM
echo "perftest: fetching com.rabbitmq:perf-test:$version and its dependencies (Maven)" >&2
rm -rf "$lib"
mvn -q -B -f "$cache/$version/pom.xml" -Dmaven.repo.local="$cache/m2" \
  org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
  -DoutputDirectory="$lib" -DincludeScope=runtime >&2
compgen -G "$lib/perf-test-*.jar" >/dev/null || { echo "perftest: no perf-test jar in $lib" >&2; exit 1; }
# Maven's own plugins and the copies are all it needs from the local repository.
rm -rf "$cache/m2/com/rabbitmq"
touch "$cache/$version/.done"
echo "$lib/*"
