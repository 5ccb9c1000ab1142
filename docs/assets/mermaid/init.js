// Draw the ```mermaid blocks (rendered by pymdownx.superfences as
// <div class="aioelect-mermaid">) with the vendored mermaid.min.js, in the page's own
// DOM (so that tests/test_docs_site.py can see the SVGs), without any network access.
(function () {
  function draw() {
    var nodes = document.querySelectorAll("div.aioelect-mermaid:not([data-processed])");
    if (nodes.length === 0) return;
    mermaid.initialize({ startOnLoad: false, theme: "default", securityLevel: "strict" });
    mermaid.run({ nodes: nodes });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(draw); // material's page-load observable
  } else {
    document.addEventListener("DOMContentLoaded", draw);
  }
})();
