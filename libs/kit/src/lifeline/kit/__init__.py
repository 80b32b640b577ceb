"""lifeline.kit: the plumbing every Lifeline service shares."""
