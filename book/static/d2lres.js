// The language switch of a chapter page (fixed in a corner, so at hand at any scroll position)
// leads to the same section: on a click, its link takes the anchor of the section at the top
// of the window (the tab choice itself is sphinx-design's,
// kept in localStorage, so it carries over to the other language).
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("a.d2lres-lang-switch").forEach((link) => {
    link.addEventListener("click", () => {
      let current = "";
      document.querySelectorAll("section[id]").forEach((section) => {
        if (section.getBoundingClientRect().top <= 80) current = section.id;
      });
      const anchor = current || window.location.hash.slice(1);
      link.hash = anchor ? "#" + anchor : "";
    });
  });
});

// Arriving with an anchor (from the other language, say), land on it once the page is laid out:
// the remembered tab choice and the fonts change the heights above it after the first scroll.
window.addEventListener("load", () => {
  const id = decodeURIComponent(window.location.hash.slice(1));
  const target = id && document.getElementById(id);
  if (target) target.scrollIntoView({ behavior: "instant" });
});
