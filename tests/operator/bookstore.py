"""What ``examples/bookstore.yaml`` must become: every child, by kind and name."""

from __future__ import annotations

BOOKSTORE_CHILDREN = {
    ("Secret", "bookstore-db-credentials"),
    ("Secret", "bookstore-api-keys"),
    ("ConfigMap", "bookstore-config"),
    ("Service", "bookstore-db"),
    ("StatefulSet", "bookstore-db"),
    ("Service", "bookstore-redis"),
    ("Deployment", "bookstore-redis"),
    ("Service", "bookstore-api"),
    ("Deployment", "bookstore-api"),
    ("PodDisruptionBudget", "bookstore-api"),
    ("HorizontalPodAutoscaler", "bookstore-api"),
    ("Service", "bookstore-gateway"),
    ("Deployment", "bookstore-gateway"),
    ("PodDisruptionBudget", "bookstore-gateway"),
    ("NetworkPolicy", "bookstore-gateway"),
    ("NetworkPolicy", "bookstore-api"),
    ("NetworkPolicy", "bookstore-redis"),
    ("NetworkPolicy", "bookstore-db"),
}
