"""A table of tricky (prediction, gold, expected) triples for `is_equivalent`, decided by hand; and
a table of whole responses, (response, gold, verdict with extraction "strict", with "lenient"), for
`grade_response`: what counts as the final answer of a response (several boxes, no box at all).

Each row is a claim about one convention of the grader (see the grader.py docstring). Negatives
matter as much as positives: a grader that says "yes" too often inflates every score.
"""
import pytest

from grader import grade_response, is_equivalent

T, F = True, False

INTEGERS_AND_DECIMALS = [
    ("25", "025", T),  # AIME golds keep leading zeros
    ("025", "25", T),
    ("73", "073", T),
    ("0", "000", T),
    ("+5", "5", T),
    ("-5", "5", F),
    ("5", "-5", F),
    ("5.0", "5", T),
    ("5.00", "5", T),
    ("5.01", "5", F),
    ("142", "142.0", T),  # rllm's str() of AMC's float gold
    ("142.0", "142", T),
    ("0.5", ".5", T),
    (".5", "0.50", T),
    ("0.15", "0.150", T),
    ("0.15", "0.151", F),
    ("1e3", "1000", T),
    ("1E3", "1000", T),
    ("1000", "1,000", T),
    ("1,000,000", "1000000", T),
    ("7,425,000", "7425000", T),
    ("10080", "10,\\!080", T),
    ("11111111100", "11,\\! 111,\\! 111,\\! 100", T),
    ("12", "1,2", F),
    ("1000", "100", F),
    ("3.14159265", "\\pi", T),  # within the relative tolerance
    ("3.14", "\\pi", F),
    ("0.3333333", "\\frac{1}{3}", T),
    ("0.333", "\\frac{1}{3}", F),
    ("0.0000672", ".0000672", T),
    ("6.72e-5", ".0000672", T),
    ("326.5", "326.50", T),
    ("-0.875", "-\\frac{7}{8}", T),
    ("0.875", "-\\frac{7}{8}", F),
    ("1.25", "\\frac{5}{4}", T),
    ("1.2", "\\frac{5}{4}", F),
    ("100", "10^2", T),
    ("1000", "10^{3}", T),
    ("2", "2.0000001", T),
    ("2", "2.001", F),
    ("204", "\\framebox{204}", T),
    ("99.9", "99.9\n", T),
    ("+2", "+2\n", T),
    ("2", "+2\n", T),
]

FRACTIONS = [
    ("\\frac{1}{2}", "0.5", T),
    ("\\dfrac12", "\\frac{1}{2}", T),
    ("\\tfrac{1}{2}", "\\frac12", T),
    ("\\cfrac{1}{2}", "1/2", T),
    ("\\frac 12", "\\frac{1}{2}", T),
    ("1/2", "\\frac{1}{2}", T),
    ("\\frac{2}{4}", "\\frac{1}{2}", T),  # unreduced still equal (rllm would say no)
    ("-\\frac{1}{2}", "\\frac{-1}{2}", T),
    ("\\frac{1}{-2}", "-0.5", T),
    ("-\\frac12", "\\frac12", F),
    ("\\frac{1}{2}", "2", F),
    ("2", "\\frac{1}{2}", F),
    ("\\frac12", "\\frac21", F),
    ("\\frac{3}{56}", "\\frac{3}{65}", F),
    ("\\frac{14}{3}", "4\\frac{2}{3}", T),  # MATH's mixed numbers
    ("1\\frac{4}{5}", "\\frac{9}{5}", T),
    ("137 \\frac{1}{2}", "137.5", T),
    ("137\\frac12", "275/2", T),
    ("-2\\frac{1}{2}", "-2.5", T),
    ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}", T),
    ("\\frac{9}{19}", "\\frac9{19}", T),
    ("\\frac{4}{3}", "\\frac43", T),
    ("\\frac{43}{1}", "\\frac43", F),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", T),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt3}", T),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{3}", F),
    ("\\frac{3}{2}", "1.5", T),
    ("3/2", "\\frac{2}{3}", F),
    ("\\frac{10}{9}", "10/9", T),
    ("-10/9", "-\\frac{10}{9}", T),
    ("\\frac{1}{12}", "0.0833333333", T),
    ("\\frac{1}{12}", "0.083", F),
]

LATEX_NOISE = [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})", T),
    ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", T),
    ("$\\frac{14}{3}$", "\\frac{14}{3}", T),
    ("\\(\\frac{14}{3}\\)", "\\frac{14}{3}", T),
    ("\\[ 9 \\]", "9", T),
    ("9.", "9", T),
    ("9\n", "9", T),
    ("\\boxed{9}", "9", T),
    ("90", "90^\\circ", T),
    ("90^{\\circ}", "90^\\circ", T),
    ("90^\\circ", "90", T),
    ("90 degrees", "90^\\circ", T),
    ("90\\text{ degrees}", "90", T),
    ("89^\\circ", "90^\\circ", F),
    ("41.8", "41.8^{\\circ}\n", T),
    ("1950", "1950^\\circ C\n", T),
    ("10\\%", "10", T),
    ("10", "10\\%", T),
    ("11\\%", "10\\%", F),
    ("32348", "\\$32,\\!348", T),
    ("\\$18.90", "18.9", T),
    ("36", "\\$36", T),
    ("15", "15\\mbox{ cm}^2", T),
    ("15 \\text{ cm}^2", "15", T),
    ("864", "864 \\mbox{ inches}^2", T),
    ("5.4", "5.4 \\text{ cents}", T),
    ("125", "125 miles", T),
    ("125\\textnormal{ miles}", "125", T),
    ("126", "125 miles", F),
    ("15000", "15000 \\text{ kcal m}^{-2} \\text{yr}^{-1}\n", T),
    ("4.4677 \\times 10^{14}", "4.4677 \\times 10^{14} Hz\n", T),
    ("2\\!\\sqrt{5}", "2\\sqrt{5}", T),
    ("2 \\, \\sqrt{5}", "2\\sqrt{5}", T),
    ("\\displaystyle \\frac{1}{4}", "\\frac14", T),
    ("x \\in [-2,7]", "[-2,7]", T),
    ("[-2,7]", "x \\in [-2,7]", T),
    ("\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", "[\\frac{\\pi^2}{8},\\frac{5\\pi^2}{4}]", T),
    ("\\frac{1}{2}.", "$\\frac{1}{2}$", T),
    ("0.003", "0.003^{\\prime \\prime}\n", T),
    ("\\sqrt{51}", "\\sqrt{51}\n", T),
    ("11\\sqrt2", "11\\sqrt{2}", T),
    ("11\\sqrt{2}", "11 \\sqrt 2", T),
    ("\\sqrt 2+\\sqrt 5", "\\sqrt{2}+\\sqrt{5}", T),
    ("\\frac94\\pi", "\\frac{9}{4}\\pi", T),
    ("9\\pi/4", "\\frac{9\\pi}{4}", T),
]

TUPLES_AND_INTERVALS = [
    ("(1,2)", "(1,2)", T),
    ("(1, 2)", "(1,2)", T),
    ("(1,2)", "(2,1)", F),  # ordered pairs are ordered
    ("(6,31,-1)", "(6,31,-1)", T),
    ("(6,31,-1)", "(6,-1,31)", F),
    ("(6, 31, -1)", "(6,31)", F),
    ("(-2,1)", "(-2,1)", T),
    ("(15,-29)", "(15, -29)", T),
    ("(\\frac{3}{2}, -13)", "\\left( \\frac{3}{2}, -13 \\right)", T),
    ("(1.5,-13)", "\\left( \\frac{3}{2}, -13 \\right)", T),
    ("(1,\\frac{9}{2})", "(1,4.5)", T),
    ("(1,-16,-4,43)", "(1,-16,-4,43)", T),
    ("(1,-16,-4,42)", "(1,-16,-4,43)", F),
    ("[0,1)", "[0,1)", T),
    ("[0,1)", "[0,1]", F),  # brackets are part of an interval
    ("(0,1)", "[0,1)", F),
    ("(0,1]", "(0,1)", F),
    ("(3,4]", "(3,4]", T),
    ("(3, 4]", "(3,4]", T),
    ("[0,9)", "[0,1)", F),
    ("(2,\\infty)", "(2,\\infty)", T),
    ("(2, \\infty)", "(2,\\infty)", T),
    ("(2,\\infty)", "[2,\\infty)", F),
    ("(-\\infty, 0]", "(-\\infty,0]", T),
    ("(-\\infty,0)", "(-\\infty,0]", F),
    ("(-\\infty,2)\\cup(3,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)", T),
    ("(3,\\infty)\\cup(-\\infty,2)", "(-\\infty, 2) \\cup (3, \\infty)", T),
    ("(-\\infty,2]\\cup(3,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)", F),
    ("(0,9) \\cup (9,36)", "(0,9) \\cup (9,36)", T),
    ("(0,36)", "(0,9) \\cup (9,36)", F),
    ("(-\\sqrt{3}, \\sqrt{3})", "(-\\sqrt{3},\\sqrt{3})", T),
    ("(-1.7320508, 1.7320508)", "(-\\sqrt{3},\\sqrt{3})", T),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6, \\frac{8}{3}]", T),
    ("[-1, -\\tfrac12) \\cup (-\\tfrac12, 0)", "[-1, -\\frac{1}{2}) \\cup (-\\frac{1}{2}, 0)", T),
    ("(1,2)", "1,2", F),  # a pair is not a list of two answers
    ("1,2", "(1,2)", F),
    ("(2,12) \\cup (12,102)", "(2,12) \\cup (12,102)", T),
    ("\\langle 1, 2 \\rangle", "(1,2)", T),
    ("(3)", "3", T),
    ("((3))", "3", T),
]

LISTS_AND_SETS = [
    ("1,-2", "1,-2", T),
    ("-2, 1", "1,-2", T),  # "enter all solutions": any order
    ("-2,1", "-2,1", T),
    ("1,-2,3", "1,-2", F),
    ("1", "1,-2", F),
    ("3, 5, 7", "3, 5, 7", T),
    ("7,5,3", "3, 5, 7", T),
    ("3,5,7,9", "3, 5, 7", F),
    ("3,5", "3, 5, 7", F),
    ("\\{1,2\\}", "1,2", T),
    ("1,2", "\\{2,1\\}", T),
    ("\\{1,2\\}", "(1,2)", F),
    ("5", "\\{5\\}", T),
    ("\\{5\\}", "5", T),
    ("1, 1, 2", "1, 2, 2", F),  # multisets, not sets
    ("x=1, x=-2", "1,-2", T),
    ("x = 1 \\text{ or } x = -2", "1,-2", T),
    ("1 \\text{ and } -2", "-2, 1", T),
    ("12 \\text{ and } 13", "12, 13", T),
    ("$69$,$84$", "84,69", T),
    ("(1,8,19), (2,7,13), (4,5,7)", "$(1,8,19), (2,7,13), (4,5,7)$", T),
    ("(4,5,7), (1,8,19), (2,7,13)", "$(1,8,19), (2,7,13), (4,5,7)$", T),
    ("(1,8,19), (2,7,13)", "$(1,8,19), (2,7,13), (4,5,7)$", F),
    ("(1,8,19), (2,13,7), (4,5,7)", "$(1,8,19), (2,7,13), (4,5,7)$", F),
    ("-1, 0, 1", "-1,0,1", T),
    ("10,11,12,13,14,-2,-1,0,1,2", "10,11,12,13,14,-2,-1,0,1,2", T),
    ("1, 3, 5, 15", "1, 3, 5, 15", T),
    ("\\frac{1}{6}\\pi, \\frac{5}{6}\\pi", "\\frac{5\\pi}{6}, \\frac{\\pi}{6}", T),
    ("2500, 7500", "2500,7500", T),
    ("2500", "2500,7500", F),
    ("\\{1\\pm\\sqrt{5},-2\\}", "\\{1\\pm\\sqrt{5},-2\\}", T),
    ("-2, 1+\\sqrt5, 1-\\sqrt5", "\\{1\\pm\\sqrt{5},-2\\}", T),
    ("a=2, a=-6-4\\sqrt{2}", "$a=2$, $a=-6-4 \\sqrt{2}$", T),
    ("2, -6-4\\sqrt{2}", "$a=2$, $a=-6-4 \\sqrt{2}$", T),
    ("2, -6+4\\sqrt{2}", "$a=2$, $a=-6-4 \\sqrt{2}$", F),
    ("100,\\frac{1}{100}", "$100,\\frac{1}{100}$", T),
    ("0.01, 100", "$100,\\frac{1}{100}$", T),
]

PLUS_MINUS = [
    ("1 \\pm \\sqrt{19}", "1 \\pm \\sqrt{19}", T),
    ("1+\\sqrt{19}, 1-\\sqrt{19}", "1 \\pm \\sqrt{19}", T),
    ("1-\\sqrt{19},1+\\sqrt{19}", "1 \\pm \\sqrt{19}", T),
    ("1+\\sqrt{19}", "1 \\pm \\sqrt{19}", F),
    ("3 \\pm 2\\sqrt{2}", "3 \\pm 2 \\sqrt{2}", T),
    ("3+2\\sqrt2, 3-2\\sqrt2", "3 \\pm 2 \\sqrt{2}", T),
    ("x = 3 \\pm 2\\sqrt{2}", "3 \\pm 2 \\sqrt{2}", T),
    ("2 \\pm \\sqrt{2}", "3 \\pm 2 \\sqrt{2}", F),
]

EQUATIONS = [
    ("x=5", "x=5", T),
    ("5", "x=5", T),
    ("x=5", "5", T),
    ("x = 5", "5", T),
    ("k=1", "1", T),
    ("1", "k=1", T),
    ("x=4", "x=5", F),
    ("4", "x=5", F),
    ("y = 2x + 3", "y = 2x + 3", T),
    ("y=3+2x", "y = 2x + 3", T),
    ("2x+3", "y = 2x + 3", T),
    ("y=2x-3", "y = 2x + 3", F),
    ("2x - y + 3 = 0", "y = 2x + 3", T),  # the same line
    ("y = -2x", "y = -2x", T),
    ("2x+y=0", "y = -2x", T),
    ("y = 2x", "y = -2x", F),
    ("5x - 7y + 11z + 4 = 0", "5x - 7y + 11z + 4 = 0", T),
    ("-5x+7y-11z-4=0", "5x - 7y + 11z + 4 = 0", T),
    ("10x - 14y + 22z + 8 = 0", "5x - 7y + 11z + 4 = 0", T),
    ("5x - 7y + 11z - 4 = 0", "5x - 7y + 11z + 4 = 0", F),
    ("f(x)=2x", "$f(x)=2 x$", T),
    ("2x", "$f(x)=2 x$", T),
    ("x+x", "$f(x)=2 x$", T),
    ("3x", "$f(x)=2 x$", F),
    ("n^2+1", "$f(n)=n^{2}+1$", T),
    ("x = 5+5+1 = 11", "11", T),  # the last value counts
    ("x \\approx 11", "11", T),
    ("M=2^{N-2}+1", "$M=2^{N-2}+1$", T),
    ("2^{N-2}+1", "$M=2^{N-2}+1$", T),
    ("2^{N-2}", "$M=2^{N-2}+1$", F),
    ("\\frac{9}{32}\\sqrt{2}", "$M=\\frac{9}{32} \\sqrt{2}$", T),
    ("7 = 11a+c", "11a+c", F),
    ("11a+c", "7 = 11a+c", F),
    ("x=3", "y=3", F),
    ("x^2/4 + y^2/3 = 1", "x^2/16 + y^2/12 = 1/4", T),
]

RELATIONS = [
    ("x \\geq 5", "x \\ge 5", T),
    ("x \\geqslant 5", "x \\geq 5", T),
    ("x >= 5", "x \\geq 5", T),
    ("x \\leq 5", "x \\geq 5", F),
    ("x > 5", "x < 5", F),
    ("k \\geqslant 2", "$k \\geqslant 2$", T),
    ("k \\geq 3", "$k \\geqslant 2$", F),
    ("x \\neq 3", "x != 3", T),
]

MULTIPLE_CHOICE = [
    ("C", "\\text{(C)}", T),
    ("(C)", "\\text{(C)}", T),
    ("\\text{(C)}", "C", T),
    ("\\textbf{(C)}", "(C)", T),
    ("(C) 15", "\\text{(C)}", T),
    ("c", "\\text{(C)}", T),
    ("B", "\\text{(C)}", F),
    ("(E)", "\\text{(E)}", T),
    ("E", "\\text{(B)}", F),
    ("15", "\\text{(C)}", F),
]

SCIENTIFIC_NOTATION = [
    ("4.4e7", "4.4 \\times 10^7\n", T),
    ("4.4 \\times 10^{7}", "4.4e7\n", T),
    ("4.4\\cdot 10^{7}", "4.4e7", T),
    ("44000000", "4.4e7", T),
    ("4.4 \\times 10^{-7}", "4.4e7", F),
    ("4.5 \\times 10^{7}", "4.4e7", F),
    ("8.7 \\times 10^8", "8.7 \\times 10^{8}", T),
    ("870000000", "8.7 \\times 10^{8}", T),
    ("7e37", "7 \\times 10^{37}\n", T),
    ("3.3 \\times 10^{12}", "3.3e12\n", T),
    ("1e-5", "1e-5\n", T),
    ("10^{-5}", "1e-5\n", T),
    ("0.00001", "1e-5\n", T),
    ("1e-3", "10^{-3}\n", T),
    ("2.7778 \\times 10^{-6}", "2.7778 \\times 10^{-6}\n", T),
    ("2.78 \\times 10^{-6}", "2.7778 \\times 10^{-6}\n", F),
    ("8.224 \\times 10^{-19}", "8.224 \\times 10^{-19}", T),
    ("8.3 \\times 10^{-19}", "8.224 \\times 10^{-19}", F),  # relative, not absolute, tolerance
    ("3.89e-10", "3.89 \\times 10^{-10}", T),
    ("1.70e4", "17000", T),
    ("1.7 \\times 10^4", "1.70e4\n", T),
]

M3 = "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}"
M22 = "\\begin{pmatrix}1 & 2 \\\\3 & 4\\end{pmatrix}"
MATRICES = [
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", T),
    ("\\begin{bmatrix} -1 & 0 \\\\ 0 & -1 \\end{bmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", T),
    ("\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", T),
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", F),
    ("\\begin{pmatrix} -1 & 0 & 0 & -1 \\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", F),
    (M3, M3, T),
    ("\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}", M3, T),
    ("\\begin{pmatrix} 2/3 \\\\ -1/3 \\\\ 5/3 \\end{pmatrix}", M3, F),
    ("(-1/3, 2/3, 5/3)", M3, T),  # a vector as a tuple
    ("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", "(-2,-14,-7)", T),
    ("(-2,-14,7)", "\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", F),
    ("\\left[\\begin{array}{cc}1 & 2 \\\\3 & 4\\end{array}\\right]", M22, T),
    ("\\begin{pmatrix}0.5 & 0.75\\end{pmatrix}", "\\begin{pmatrix}\\frac{1}{2} & \\frac{3}{4}\\end{pmatrix}", T),
    ("\\begin{vmatrix}1 & 2 \\\\3 & 4\\end{vmatrix}", M22, T),
]

TEXT_ANSWERS = [
    ("Evelyn", "\\text{Evelyn}", T),
    ("\\text{Evelyn}", "\\text{Evelyn}", T),
    ("evelyn", "\\text{Evelyn}", T),
    ("Navin", "\\text{Evelyn}", F),
    ("\\text{east}", "\\text{east}", T),
    ("East", "\\text{east}", T),
    ("west", "\\text{east}", F),
    ("even", "\\text{even}", T),
    ("odd", "\\text{even}", F),
    ("\\text{ellipse}", "\\text{ellipse}", T),
    ("ellipse", "\\text{ellipse}", T),
    ("parabola", "\\text{ellipse}", F),
    ("SRMC=LRMC", "SRAC=LRAC\n", F),
    ("\\text{no solution}", "\\text{No solution}", T),
]

EXPRESSIONS = [
    ("p - q", "p - q", T),
    ("p-q", "p - q", T),
    ("-q+p", "p - q", T),
    ("q-p", "p - q", F),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "x^5 - x^4 + x^3 - x^2 + x - 1", T),
    ("-1+x-x^2+x^3-x^4+x^5", "x^5 - x^4 + x^3 - x^2 + x - 1", T),
    ("x^5 - x^4 + x^3 - x^2 + x + 1", "x^5 - x^4 + x^3 - x^2 + x - 1", F),
    ("(x-1)(x^4+x^2+1)", "x^5 - x^4 + x^3 - x^2 + x - 1", T),
    ("x^3+3x-6", "x^3+3x-6", T),
    ("3x+x^3-6", "x^3+3x-6", T),
    ("x^3+3x+6", "x^3+3x-6", F),
    ("2k+2", "2k+2", T),
    ("2(k+1)", "2k+2", T),
    ("2k+1", "2k+2", F),
    ("(a+5)(b+2)", "(a+5)(b+2)", T),
    ("ab+2a+5b+10", "(a+5)(b+2)", T),
    ("(a+5)(b-2)", "(a+5)(b+2)", F),
    ("(+5)(b+2)", "(a+5)(b+2)", F),
    ("\\frac{11+9a}{20}", "\\frac{11+9a}{20}", T),
    ("\\frac{11}{20}+\\frac{9a}{20}", "\\frac{11+9a}{20}", T),
    ("0.55+0.45a", "\\frac{11+9a}{20}", T),
    ("\\frac{11+9a}{21}", "\\frac{11+9a}{20}", F),
    ("6r^2-4r-24", "6r^2-4r-24", T),
    ("2(3r^2-2r-12)", "6r^2-4r-24", T),
    ("6r^2-4r+24", "6r^2-4r-24", F),
    ("\\cot x", "\\cot x", T),
    ("\\frac{\\cos x}{\\sin x}", "\\cot x", T),
    ("\\tan x", "\\cot x", F),
    ("\\sec^2 y", "\\tan^2 y + 1", T),
    ("2 \\sin b \\cos a", "2 \\sin b \\cos a", T),
    ("\\sin(a+b) - \\sin(a-b)", "2 \\sin b \\cos a", T),
    ("2 \\sin a \\cos b", "2 \\sin b \\cos a", F),
    ("8n^2 + 4n + 1", "8n^2 + 4n + 1", T),
    ("4n(2n+1)+1", "8n^2 + 4n + 1", T),
    ("15x - 80", "15x - 80", T),
    ("5(3x-16)", "15x - 80", T),
    ("15x + 80", "15x - 80", F),
    ("-13x+3", "-13x+3", T),
    ("3-13x", "-13x+3", T),
    ("5r^5", "5r^5", T),
    ("5r^4", "5r^5", F),
    ("3R^2", "3R^2", T),
    ("3r^2", "3R^2", F),  # case matters for variables
    ("\\frac{n(n+1)}{2}", "$\\frac{n(n+1)}{2}$", T),
    ("\\frac{n^2+n}{2}", "$\\frac{n(n+1)}{2}$", T),
    ("\\frac{n(n-1)}{2}", "$\\frac{n(n+1)}{2}$", F),
    ("2^{k-1}", "$2^{k-1}$", T),
    ("\\frac{2^k}{2}", "$2^{k-1}$", T),
    ("2^{k+1}", "$2^{k-1}$", F),
    ("\\binom{2n}{n}", "$\\binom{2n}{n}$", T),
    ("\\lfloor\\log_2 n\\rfloor+1", "$\\left\\lfloor\\log _{2} n\\right\\rfloor+1$", T),
    ("\\frac{x}{7}+\\frac{2}{7}", "\\frac{x+2}{7}", T),
    ("\\frac{\\pi r}{h+r}", "\\frac{\\pi r}{h+r}", T),
    ("\\frac{\\pi r}{r+h}", "\\frac{\\pi r}{h+r}", T),
    ("\\frac{\\pi r}{h}", "\\frac{\\pi r}{h+r}", F),
    ("\\frac{e^{t}}{3}+ce^{-2t}", "\\frac{e^{t}} {3}+c e^{-2 t}\n", T),
    ("\\frac{e^t}{3}+c e^{-2t}", "x = \\frac{e^{t}}{3} + ce^{-2t}\n", T),
    ("\\frac{e^t}{3}", "\\frac{e^{t}}{3} + ce^{-2t}", F),
    ("I(0)e^{-\\frac{t}{RC}}", "I(0)e^{-\\frac{t}{RC}}\n", T),
    ("I(0)", "I(0)e^{-\\frac{t}{RC}}\n", F),  # a function's value is not 0 times anything
    ("\\sqrt{4 \\pi G \\rho_{0} r_{0}^{2}}", "\\sqrt{4 \\pi G \\rho_{0} r_{0}^{2}}", T),
    ("2r_0\\sqrt{\\pi G\\rho_0}", "\\sqrt{4 \\pi G \\rho_{0} r_{0}^{2}}", T),
    ("\\frac{1}{4-\\omega^2}", "\\frac{1}{4-\\omega^{2}}\n", T),
    ("\\frac{1}{4+\\omega^2}", "\\frac{1}{4-\\omega^{2}}\n", F),
    ("\\frac{c}{\\sqrt{2}}", "\\frac{1}{\\sqrt{2}}c\n", T),
    ("\\frac{1}{2}(e^{at} + e^{-at})", "\\frac{1}{2} (e^{at} + e^{-at})\n", T),
    ("\\cosh(at)", "\\frac{1}{2}(e^{at} + e^{-at})", T),
    ("s^2+bs+1", "s^{2}+b s+1\n", T),
    ("m\\frac{dv}{dt}+bv=f", "m \\frac{d v}{d t}+b v=f", T),
    ("\\ln 2 + \\frac{i\\pi}{3}", "\\ln 2 + i\\frac{\\pi}{3}\n", T),
    ("\\log 2 + i\\pi/3", "\\ln 2 + i\\frac{\\pi}{3}\n", T),
    ("\\frac{\\log 2}{\\log 2-\\log 3}", "$\\frac{\\log 2}{\\log 2-\\log 3}$", T),
    ("\\log_2 8", "3", T),
    ("\\log_{3} 9", "2", T),
    ("\\arcsin{\\frac{10}{13}}", "\\arcsin{\\frac{1}{1.3}}", T),
    ("\\arcsin(0.77)", "\\arcsin{\\frac{10}{13}}", F),
    ("x", "y", F),
    ("x+y", "y+x", T),
    ("xy", "yx", T),
    ("x^2", "x^{2}", T),
    ("x^{2}", "x^{3}", F),
    ("\\frac{1}{x}", "x^{-1}", T),
    ("|x|", "|x|", T),
    ("|-3|", "3", T),
    ("5!", "120", T),
    ("\\frac{100!}{2^{50}}", "$\\frac{100!}{2^{50}}$", T),
    ("\\frac{100!}{2^{49}}", "$\\frac{100!}{2^{50}}$", F),
    ("2021 \\cdot 505 \\cdot 337", "$2021 \\cdot 505 \\cdot 337$", T),
    ("343943885", "$2021 \\cdot 505 \\cdot 337$", T),
    ("343943886", "$2021 \\cdot 505 \\cdot 337$", F),
    ("2^{1009}", "$2^{1009}$", T),
    ("2^{1008}", "$2^{1009}$", F),
    ("\\frac{4 \\cdot 999^{4}}{27}", "$\\frac{4 \\cdot 999^{4}}{27}$", T),
]

RADICALS_PI_COMPLEX = [
    ("3\\sqrt{13}", "3\\sqrt{13}", T),
    ("\\sqrt{117}", "3\\sqrt{13}", T),
    ("3\\sqrt{12}", "3\\sqrt{13}", F),
    ("2\\sqrt{2}", "\\sqrt{8}", T),
    ("\\sqrt{2}", "2", F),
    ("\\sqrt[3]{8}", "2", T),
    ("\\frac{8}{\\sqrt[3]{7}}", "$\\frac{8}{\\sqrt[3]{7}}$", T),
    ("\\sqrt{4}", "2", T),
    ("70\\sqrt{2}", "70 \\sqrt{2}", T),
    ("\\sqrt{2}\\cdot 70", "70 \\sqrt{2}", T),
    ("11\\sqrt{5}+11", "11 \\sqrt{5} + 11", T),
    ("11(\\sqrt{5}+1)", "11 \\sqrt{5} + 11", T),
    ("11\\sqrt{5}-11", "11 \\sqrt{5} + 11", F),
    ("1+2\\sqrt{3}", "1+2\\sqrt{3}", T),
    ("2\\sqrt{3}+1", "1+2\\sqrt{3}", T),
    ("\\pi", "\\pi", T),
    ("\\pi", "3", F),
    ("12\\pi", "12\\pi", T),
    ("12 \\pi", "12\\pi", T),
    ("\\pi 12", "12\\pi", T),
    ("11\\pi", "12\\pi", F),
    ("288 \\pi", "288\\pi", T),
    ("18+2\\pi", "18+2\\pi", T),
    ("2\\pi+18", "18+2\\pi", T),
    ("18+\\pi", "18+2\\pi", F),
    ("\\frac{20000}{\\pi}", "\\frac{20000}{\\pi}", T),
    ("20000/\\pi", "\\frac{20000}{\\pi}", T),
    ("-\\frac{\\pi}{6}", "-\\frac{\\pi}{6}", T),
    ("\\frac{-\\pi}{6}", "-\\frac{\\pi}{6}", T),
    ("\\frac{\\pi}{6}", "-\\frac{\\pi}{6}", F),
    ("\\frac{\\pi}{2}", "90^\\circ", F),  # radians are not degrees
    ("6 - 5i", "6 - 5i", T),
    ("6-5i", "6 - 5i", T),
    ("-5i+6", "6 - 5i", T),
    ("6+5i", "6 - 5i", F),
    ("1+274i", "1+274i", T),
    ("1 + 274i", "1+274i", T),
    ("1+2i", "1+2i", T),
    ("2i+1", "1+2i", T),
    ("1-2i", "1+2i", F),
    ("1+i\\sqrt{3}", "1 + i \\sqrt{3}\n", T),
    ("1+\\sqrt{3}i", "1 + i \\sqrt{3}\n", T),
    ("-8-8\\sqrt{3}i", "-8-8 \\sqrt{3} i", T),
    ("\\sqrt{-1}", "i", T),
    ("4\\pi^2-1", "$4 \\pi^{2}-1$", T),
    ("\\frac{\\pi^2-9}{9}", "$\\frac{\\pi^{2}-9}{9}$", T),
    ("\\frac{\\pi^2}{9}-1", "$\\frac{\\pi^{2}-9}{9}$", T),
]

PERCENT = [
    ("28\\%", "28\\%", T),
    ("28", "28\\%", T),
    ("28 %", "28\\%", T),
    ("28 percent", "28\\%", T),
    ("0.28", "28\\%", T),  # percent written as a fraction
    ("28\\%", "0.28", T),
    ("0.28", "28", F),
    ("28", "0.28", F),
    ("62.5", "62.5%", T),
    ("62.5\\%", "62.5%", T),
    ("8", "$8 \\%$", T),
    ("17.5", "17.5%", T),
    ("17", "17.5%", F),
]

BASES = [
    ("52_8", "52_8", T),
    ("52_{8}", "52_8", T),
    ("528", "52_8", F),  # base 8, not a number with a subscript dropped
    ("4210_{5}", "4210_5", T),
    ("4210_5", "4210_{5}", T),
    ("4211_5", "4210_{5}", F),
    ("2516_8", "2516_8", T),
    ("204_5", "204_5", T),
    ("204_6", "204_5", F),
]

OLYMPIAD_STYLE = [
    ("\\frac{1}{2n+2}", "$\\frac{1}{2 n+2}$", T),
    ("\\frac{1}{2(n+1)}", "$\\frac{1}{2 n+2}$", T),
    ("\\frac{1}{2n+1}", "$\\frac{1}{2 n+2}$", F),
    ("2n-2", "$2n-2$", T),
    ("mn-\\lfloor m/2\\rfloor", "$m n-\\lfloor m / 2\\rfloor$", T),
    ("(2,2,2),(3,4,3)", "$(2,2,2),(3,4,3)$", T),
    ("(3,4,3),(2,2,2)", "$(2,2,2),(3,4,3)$", T),
    ("(3,4,3)", "$(2,2,2),(3,4,3)$", F),
    ("(2,251,252)", "$(2,251,252)$", T),
    ("(2,252,251)", "$(2,251,252)$", F),
    ("\\frac{3m}{2}-1", "$\\frac{3 m}{2}-1$", T),
    ("1.5m-1", "$\\frac{3 m}{2}-1$", T),
    ("1,3,5", "1,3,5", T),
    ("5,3,1", "1,3,5", T),
    ("1,3", "1,3,5", F),
    ("(-\\infty,-5)", "(-\\infty,-5)", T),
    ("(-\\infty,-5]", "(-\\infty,-5)", F),
    ("62.5\\%", "62.5%", T),
    ("f(x)=x+1", "$f(x)=x+1$", T),
    ("x+1", "$f(x)=x+1$", T),
    ("x-1", "$f(x)=x+1$", F),
    ("\\lceil n/2\\rceil+1", "$\\lceil n / 2\\rceil+1$", T),
    ("n=k+4", "$n=k+4$", T),
    ("k+4", "$n=k+4$", T),
    ("(1,1006),(3,331),(11,31)", "$(1,1006),(3,331),(11,31)$", T),
    ("\\frac{2016}{2017^2}", "$\\frac{2016}{2017^{2}}$", T),
    ("\\frac{2016}{4068289}", "$\\frac{2016}{2017^{2}}$", T),
    ("\\frac{2016}{2017}", "$\\frac{2016}{2017^{2}}$", F),
    ("(2,4)", "$(2,4)$", T),
    ("1.68, 0.45", "$1.68,0.45$", T),
    ("-2,-2", "-2,-2", T),
    ("-2", "-2,-2", F),
    ("166", "$166$", T),
    ("166 \\text{ cm}^2", "$166$", T),
    ("\\frac{600}{7}", "$\\frac{600}{7}$", T),
    ("\\frac{600}{7}\\text{ km/h}", "$\\frac{600}{7}$", T),
    ("45", "45", T),
]

ADVERSARIAL_NEGATIVES = [
    ("", "5", F),
    (" ", "5", F),
    ("none", "5", F),
    ("\\boxed{}", "5", F),
    ("5", "", F),
    ("10^{10^{10^{10}}}", "1", F),
    ("10^{10^{10^{10}}}", "10^{10^{10^{10}}}+1", F),
    ("2^{2^{2^{2^{2}}}}", "3", F),
    ("1000000!", "5", F),
    ("(x+1)^{100000}", "x", F),
    ("\\frac{1}{0}", "1", F),
    ("0/0", "0", F),
    ("{{{{1", "1", F),
    ("1}}}}", "1", F),
    ("\\sqrt{", "2", F),
    ("\\frac{1}{2", "\\frac{1}{2}", F),
    ("x=", "5", F),
    ("=5", "5", F),
    ("(,)", "(1,2)", F),
    ("[0,1", "[0,1)", F),
    ("\\begin{pmatrix} 1 \\end{pmatrix}", "\\begin{pmatrix} 2 \\end{pmatrix}", F),
    ("\\infty", "-\\infty", F),
    ("\\infty", "10^{100}", F),
    ("nan", "0", F),
    ("oo", "5", F),
    ("\\text{undefined}", "0", F),
    ("\\unknowncommand{5}", "5", F),
    ("5 = 5", "5", F),
    ("\\lambda", "\\lambda", T),
    ("lambda", "\\lambda", F),
]

# Whole responses: (response, gold, verdict when extracted "strict", when "lenient").
THINK = "<think>\nLet me work it out.\n</think>\n\n"

SEVERAL_BOXES = [
    (THINK + "The solutions are $\\boxed{1}, \\boxed{2}$.", "1, 2", T, T),
    (THINK + "The solutions are $\\boxed{2}$ and $\\boxed{1}$.", "1, 2", T, T),  # a bare list: any order
    (THINK + "The pairs are $\\boxed{(2,2)} \\text{ and } \\boxed{(6,2)}$.", "(2,2), (6,2)", T, T),
    (THINK + "\\[ x = \\boxed{3}, \\quad y = \\boxed{4} \\]", "x=3, y=4", T, T),
    (THINK + "\\[ x = \\boxed{3}, \\quad y = \\boxed{4} \\]", "3, 4", T, T),
    (THINK + "\\begin{aligned} x &= \\boxed{3} \\\\ y &= \\boxed{4} \\end{aligned}", "x=3, y=4", T, T),
    (THINK + "$\\boxed{1}$, $\\boxed{2}$, and $\\boxed{3}$", "3, 2, 1", T, T),
    (THINK + "**Final Answer**\n\\[\n\\boxed{-2} \\quad \\text{and} \\quad \\boxed{5}\n\\]", "5, -2", T, T),
    (THINK + "$\\boxed{\\frac{1}{2}}, \\boxed{0.75}$", "\\frac34, 0.5", T, T),
    (THINK + "$x=\\boxed{4}, y=\\boxed{3}$", "x=3, y=4", F, F),  # each box keeps its name
    (THINK + "$\\boxed{1}, \\boxed{3}$", "1, 2", F, F),  # one part wrong
    (THINK + "$\\boxed{(2,2)}$ and $\\boxed{(6,3)}$", "(2,2), (6,2)", F, F),
    (THINK + "$\\boxed{1}, \\boxed{2}, \\boxed{3}$", "1, 2", F, F),  # a part too many
    (THINK + "$\\boxed{1}, \\boxed{2}$", "2", F, F),  # two answers to a one-answer question
    (THINK + "$\\boxed{1}, \\boxed{2}$", "(1, 2)", F, F),  # a list is not a pair, as `1,2` != `(1,2)`
    (THINK + "Early on, $\\boxed{12}$. Checking again, the final answer is $\\boxed{13}$.", "12", F, F),
    (THINK + "Early on, $\\boxed{12}$. Checking again, the final answer is $\\boxed{13}$.", "13", T, T),
    (THINK + "Part one gives $\\boxed{3}$; thus $\\boxed{4}$.", "3, 4", F, F),  # prose between: the last only
    (THINK + "$d = \\boxed{15\\frac{39}{40}}$, or $\\boxed{\\frac{639}{40}}$ inches.", "\\frac{639}{40}", T, T),
    ("<think>\nmaybe $\\boxed{1}$,\n</think>\n$\\boxed{2}$", "1, 2", F, F),  # thinking boxes are drafts
    ("<think>\nmaybe $\\boxed{1}$,\n</think>\n$\\boxed{2}$", "2", T, T),
    (THINK + "so $x = \\boxed{3}$.", "3", T, T),  # a single box: as before
    (THINK + "$\\boxed{\\boxed{3}}$", "3", T, T),
]

UNBOXED_FINAL_ANSWERS = [
    (THINK + "So the answer is 42.", "42", T, T),  # the phrase: both modes (strict's rule since rllm)
    (THINK + "Therefore $x = 7$.", "7", F, T),
    (THINK + "Therefore $x = 7$.", "8", F, F),
    (THINK + "Putting it together:\n$$\\frac{3}{4}$$", "0.75", F, T),
    (THINK + "Hence \\[ \\frac{3}{4} \\]", "\\frac34", F, T),
    (THINK + "Finally, 6 times 7 = 42.", "42", F, T),
    (THINK + "So the total is 42.", "42", F, T),
    (THINK + "Multiplying, $6 \\cdot 7 = 42$.", "42", F, F),  # graded whole: only `x = 42` counts as 42
    (THINK + "We get $x = 3$, and then I am not sure how to continue.", "3", F, F),  # nothing mid-reasoning
    (THINK + "First $5$, then $7$, and I give up here.", "7", F, F),
    (THINK + "I need 3 more steps to be sure.", "3", F, F),
    (THINK + "Then $x = 7$ is what we get? Let me recheck.", "7", F, F),
    (THINK + "Almost done: $x = 7", "x = 7", F, F),  # an unclosed `$` is not a span
    (THINK + "$\\boxed{5}$. Therefore $x = 7$.", "7", F, F),  # a box always wins
    (THINK + "$\\boxed{5}$. Therefore $x = 7$.", "5", T, T),
    ("<think>\n$\\boxed{7}$\n</think>\nTherefore $x = 7$.", "7", F, T),
    ("<think>\nSo $x = 7$.", "7", F, F),  # no `</think>`: wrong, as rllm scored it
]

RESPONSES = [pytest.param(r, g, mode, e, id=f"{name}-{i}-{mode}")
             for name, rows in [("boxes", SEVERAL_BOXES), ("unboxed", UNBOXED_FINAL_ANSWERS)]
             for i, (r, g, strict, lenient) in enumerate(rows)
             for mode, e in (("strict", strict), ("lenient", lenient))]

TABLE = [pytest.param(p, g, e, id=f"{name}-{i}")
         for name, rows in [("integers", INTEGERS_AND_DECIMALS), ("fractions", FRACTIONS), ("latex", LATEX_NOISE),
                            ("tuples", TUPLES_AND_INTERVALS), ("lists", LISTS_AND_SETS), ("pm", PLUS_MINUS),
                            ("equations", EQUATIONS), ("relations", RELATIONS), ("choice", MULTIPLE_CHOICE),
                            ("scientific", SCIENTIFIC_NOTATION), ("matrices", MATRICES), ("text", TEXT_ANSWERS),
                            ("expressions", EXPRESSIONS), ("radicals", RADICALS_PI_COMPLEX), ("percent", PERCENT),
                            ("bases", BASES), ("olympiad", OLYMPIAD_STYLE), ("adversarial", ADVERSARIAL_NEGATIVES)]
         for i, (p, g, e) in enumerate(rows)]


def test_table_is_large_and_balanced():
    """The table holds a few hundred pairs, with a substantial share of negatives."""
    negatives = sum(1 for p in TABLE if p.values[2] is False)
    assert len(TABLE) >= 300 and negatives >= 100


@pytest.mark.parametrize("pred,gold,expected", TABLE)
def test_equivalence_table(pred, gold, expected):
    """is_equivalent agrees with the hand-decided verdict for each tricky pair."""
    assert is_equivalent(pred, gold) is expected


def test_response_table_has_negatives_in_both_modes():
    """The response table holds wrong answers for each mode, not only right ones."""
    for mode in ("strict", "lenient"):
        verdicts = [p.values[3] for p in RESPONSES if p.values[2] == mode]
        assert len(verdicts) >= 35 and verdicts.count(False) >= 15, mode


@pytest.mark.parametrize("response,gold,extraction,expected", RESPONSES)
def test_response_table(response, gold, extraction, expected):
    """grade_response, in each extraction mode, agrees with the hand-decided verdict for each response."""
    assert grade_response(response, [gold], extraction=extraction)["correct"] is expected
