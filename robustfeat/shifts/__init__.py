"""The shift bank: corruptions (batched torch functions), domain splits and OOD sets."""
