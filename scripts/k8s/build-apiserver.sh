#!/usr/bin/env bash
# Kept for callers of the old name: kube-apiserver alone, now built (and cached) by build-k8s.sh.
exec bash "$(dirname "$0")/build-k8s.sh" kube-apiserver
