"""One compile: plan, passes, target compile, verification, the auto search, the memory budget."""
