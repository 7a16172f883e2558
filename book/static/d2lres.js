// The language switch of a chapter page leads to the same section: on a click, its link takes
// the anchor of the section at the top of the window (the tab choice itself is sphinx-design's,
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
