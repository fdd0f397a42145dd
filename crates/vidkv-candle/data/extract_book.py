import sys, html.parser, re
class P(html.parser.HTMLParser):
    def __init__(s):
        super().__init__(); s.out=[]; s.in_main=False; s.skip=0; s.depth=0
    def handle_starttag(s, tag, attrs):
        if tag=='main': s.in_main=True
        if not s.in_main: return
        if tag in ('pre','script','style') or (tag=='div' and ('class','warning') in attrs) : s.skip+=1
        if tag in ('p','h1','h2','h3','li','pre','blockquote') and not s.skip: s.out.append('\n\n')
    def handle_endtag(s, tag):
        if tag=='main': s.in_main=False
        if tag in ('pre','script','style') and s.skip: s.skip-=1
    def handle_data(s, d):
        if s.in_main and not s.skip: s.out.append(d)
for f in sys.argv[1:]:
    p=P(); p.feed(open(f).read())
    t=''.join(p.out)
    t=re.sub(r'[ \t]*\n[ \t]*', '\n', t); t=re.sub(r'(?<!\n)\n(?!\n)', ' ', t); t=re.sub(r'\n{3,}', '\n\n', t); t=re.sub(r' {2,}',' ',t)
    print(t.strip()); print()
