#!/bin/sh
# Distributed Qdrant in a StatefulSet: peer 0 starts the cluster, every other peer joins it
# through peer 0. Each peer announces its stable DNS name (qdrant-N.qdrant-headless) for p2p.
# A peer with existing storage rejoins from its own Raft state; the flags matter on first start.
set -e
ordinal="${HOSTNAME##*-}"
self="http://${HOSTNAME}.qdrant-headless:6335"
echo "qdrant peer ${ordinal}: ${self}"
if [ "${ordinal}" = "0" ]; then
  exec ./entrypoint.sh --uri "${self}"
fi
exec ./entrypoint.sh --bootstrap "http://qdrant-0.qdrant-headless:6335" --uri "${self}"
