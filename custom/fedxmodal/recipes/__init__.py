"""Host side: NVFlare jobs built as recipes, one per protocol (:mod:`.fedavg`), from specs
(:mod:`.spec`), out of shared building blocks (:mod:`.components`, :mod:`.filters`); exported
to job folders by :mod:`.export`. Nothing here ships with a job."""
