"""Workflows: DAG steps run as pods on the topology-aware scheduler, each with a composed runtime.

Pure core: spec (validation), expr (depends/when), dag (observe + step),
catalog and composer (runtime -> mounts, env, driver affinity), podspec,
status (CR codec), render, plan. Edges: kube (the API boundary) and
controller (watch + apply), the gedge-flow CLI in cli.py and commands/.
"""
