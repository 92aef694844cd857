"""Teachers: who writes the data a method learns from (the scripted teacher of the text environments, the
reflection teacher, the verbal-feedback teacher of C3PO), scripted or through any backend."""
