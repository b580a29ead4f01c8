"""Pair formats: how a model family turns (instruction, query, document) into a prompt,
with the options it adds. The core (protocol, service, compare) names none of them."""
